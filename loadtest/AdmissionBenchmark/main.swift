import Foundation
import NIOPosix
import SluiceCore
import SluiceStore
import Synchronization

// Measures admission decisions per second through RedisStore with concurrent callers, Redis
// round trips (EVALSHA calls, from INFO commandstats) and Redis CPU (INFO cpu) per admitted
// request. Lease releases ride along with later calls, so they add no round trips; commands the
// scripts run inside Redis are reported separately. With --keyed every admission also claims a
// fresh idempotency key and records a small response for it, as a keyed POST does — the Redis
// side of an idempotent request, without the gateway's own work.
//
//   sluice-admission-bench REDIS_URL [--callers N] [--seconds S] [--partners P] [--keyed]

struct Options {
    var url = "redis://127.0.0.1:6379/0"
    var callers = 256
    var seconds = 10.0
    var partners = 100
    var keyed = false

    init(_ arguments: [String]) {
        var rest = arguments.dropFirst()
        while let argument = rest.popFirst() {
            switch argument {
            case "--callers": callers = Int(rest.popFirst() ?? "") ?? callers
            case "--seconds": seconds = Double(rest.popFirst() ?? "") ?? seconds
            case "--partners": partners = Int(rest.popFirst() ?? "") ?? partners
            case "--keyed": keyed = true
            default: url = argument
            }
        }
    }
}

final class Counters: Sendable {
    let admitted = Atomic<Int>(0)
    let refused = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
}

/// The lines of one INFO section.
func infoLines(_ client: RedisClient, _ section: String) async throws -> [Substring] {
    guard case .string(let bytes) = try await client.send(["INFO", section]) else { return [] }
    return String(decoding: bytes, as: UTF8.self).split(separator: "\r\n")
}

/// Seconds of CPU the Redis server has used (user + system), from INFO cpu.
func redisCPUSeconds(_ client: RedisClient) async throws -> Double {
    try await infoLines(client, "cpu")
        .filter { $0.hasPrefix("used_cpu_sys:") || $0.hasPrefix("used_cpu_user:") }
        .compactMap { $0.split(separator: ":").last.flatMap { Double($0) } }
        .reduce(0, +)
}

/// Calls per command, from INFO commandstats.
func commandCalls(_ client: RedisClient) async throws -> [String: Int] {
    var calls: [String: Int] = [:]
    for line in try await infoLines(client, "commandstats") where line.hasPrefix("cmdstat_") {
        let name = String(line.dropFirst(8).prefix { $0 != ":" })
        if let text = line.split(separator: ",").first?.split(separator: "=").last, let count = Int(text) { calls[name] = count }
    }
    return calls
}

let options = Options(CommandLine.arguments)
let url = try RedisURL.parse(options.url).get()
let group = MultiThreadedEventLoopGroup.singleton
let client = try RedisStore.makeClient(url: url, tlsCA: nil, timeout: .seconds(2), group: group)
let store = RedisStore(client: client, keyPrefix: "bench")
let probe = try RedisClient(url: url, timeout: .seconds(2), group: group)
await client.connect()

// A plan that never refuses, with a concurrency cap so leases are taken and released too.
let limits = AdmissionLimits(
    LimitSet(rate: .init(perSecond: 1_000_000, burst: 1_000_000), quota: .init(requests: 1_000_000_000, per: .day), concurrency: 1_000_000),
    cost: 1
)
let counters = Counters()
func sha256(_ text: String) -> SHA256Digest {
    var hasher = BodyHasher()
    Array(text.utf8).withUnsafeBytes { hasher.update($0) }
    return hasher.finalize()
}

// What a keyed POST keeps: a small JSON response with a few replayable headers.
let record = IdempotencyRecord(
    fingerprint: RequestFingerprint(
        target: RequestFingerprint.target(method: "POST", pathAndQuery: "/v2/orders"),
        body: sha256(#"{"part":"A-1","qty":5}"#)
    ),
    status: 201, headers: [.init("Content-Type", "application/json"), .init("Location", "/v2/orders/17")],
    body: Array(#"{"id":17,"part":"A-1","qty":5,"status":"accepted"}"#.utf8), bodyKept: true
)
let run = "\(UInt32.random(in: 0...UInt32.max))"
let partners = (0..<options.partners).map { "partner-\($0)" }

/// An admission that claims `key` and, once admitted and claimed, records the response for it.
func admitKeyed(partner: String, lease: String, key: String) async throws -> AdmissionDecision {
    let token = "t-\(lease)"
    let answer = try await store.admit(
        partner: partner, limits: limits, lease: lease, leaseDuration: .seconds(30),
        claiming: IdempotencyClaimRequest(key: key, token: token, lease: .seconds(30))
    )
    guard answer.claim == .claimed else { return answer.decision }
    guard try await store.record(record, partner: partner, key: key, token: token, retention: .seconds(86_400)) else {
        throw RedisError.protocolViolation("a fresh claim was not recorded")
    }
    return answer.decision
}

// Warm up (connections, script cache), then measure.
for partner in partners { _ = try await store.admit(partner: partner, limits: limits, lease: nil, leaseDuration: .seconds(30)) }
let callsBefore = try await commandCalls(probe)
let cpuBefore = try await redisCPUSeconds(probe)
let started = ContinuousClock.now
let deadline = started + .milliseconds(Int64(options.seconds * 1_000))
await withTaskGroup(of: Void.self) { tasks in
    for caller in 0..<options.callers {
        tasks.addTask {
            var sequence = 0
            while ContinuousClock.now < deadline {
                sequence += 1
                let partner = partners[(caller + sequence) % partners.count]
                let lease = "c\(caller)-\(sequence)"
                do {
                    let decision = try await options.keyed
                        ? admitKeyed(partner: partner, lease: lease, key: "\(run)-\(lease)")
                        : store.admit(partner: partner, limits: limits, lease: lease, leaseDuration: .seconds(30))
                    if decision.verdict == .admitted {
                        counters.admitted.add(1, ordering: .relaxed)
                        store.release(partner: partner, lease: lease)
                    } else {
                        counters.refused.add(1, ordering: .relaxed)
                    }
                } catch {
                    counters.failed.add(1, ordering: .relaxed)
                }
            }
        }
    }
}
let elapsed = ContinuousClock.now - started
let callsAfter = try await commandCalls(probe)
let cpuAfter = try await redisCPUSeconds(probe)
try await store.flushReleases()
let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
let admitted = counters.admitted.load(ordering: .relaxed)
let roundTrips = (callsAfter["evalsha"] ?? 0) - (callsBefore["evalsha"] ?? 0)
let allCommands = callsAfter.values.reduce(0, +) - callsBefore.values.reduce(0, +) - 1  // minus the INFO itself
let summary = String(
    format: "callers=%d partners=%d seconds=%.1f decisions=%d admitted=%d refused=%d failed=%d decisions/s=%.0f round-trips/admitted=%.3f commands-inside-redis/admitted=%.2f redis-cpu-us/admitted=%.1f",
    options.callers, options.partners, seconds, admitted + counters.refused.load(ordering: .relaxed), admitted,
    counters.refused.load(ordering: .relaxed), counters.failed.load(ordering: .relaxed),
    Double(admitted + counters.refused.load(ordering: .relaxed)) / seconds,
    Double(roundTrips) / Double(max(1, admitted)), Double(allCommands - roundTrips) / Double(max(1, admitted)),
    (cpuAfter - cpuBefore) * 1e6 / Double(max(1, admitted))
)
print((options.keyed ? "keyed " : "") + summary)
await client.shutdown()
await probe.shutdown()
