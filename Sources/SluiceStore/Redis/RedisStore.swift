public import NIOCore
public import SluiceCore
import Synchronization

/// The shared store on Redis: any number of gateways enforce one limit per partner.
///
/// Decisions are made by one Lua script using the server's `TIME`. Requests of one partner
/// that arrive while a call for that partner is under way are decided together by the next
/// call (in arrival order), so each request costs at most one round trip and a busy partner
/// far less. Lease releases are queued and ride along with the partner's next call (or go out
/// in a batch on `flushReleases()`).
public final class RedisStore: AdmissionStore {
    private enum Turn {
        case decided(AdmissionDecision)
        case failed(any Error)
        /// Make the next call for the queue, starting with your own request.
        case lead
    }

    private struct Waiting {
        /// Requests decided together share their limits (all of a partner's, barring a reload).
        let limits: AdmissionLimits
        let lease: String?
        let continuation: CheckedContinuation<Turn, Never>
    }

    private struct Queue {
        var waiting: [Waiting] = []
        var callsInProgress = 0
    }

    /// Most requests per call (Lua's `unpack` limit and reply size stay small).
    static let batchLimit = 256
    /// Calls per partner under way at once: a second one keeps the pipe full while the first
    /// travels; Redis runs them one after the other, so decisions stay atomic and in order.
    static let callsPerPartner = 2

    private let client: RedisClient
    private let keyPrefix: String
    private let clock: EpochClock?
    /// By partner.
    private let queues = Mutex<[String: Queue]>([:])
    private let pendingReleases = Mutex<[String: [String]]>([:])

    /// A client for this store: it loads the admission scripts whenever it opens a connection.
    /// - Parameter onCommand: Called for every command sent to Redis (to count round trips).
    public static func makeClient(
        url: RedisURL, tlsCA: String?, timeout: Duration, group: any EventLoopGroup, onCommand: (@Sendable () -> Void)? = nil
    ) throws -> RedisClient {
        try RedisClient(
            url: url, tlsCA: tlsCA, timeout: timeout, connections: 2, scripts: [AdmissionScripts.admit, AdmissionScripts.renew], group: group,
            onCommand: onCommand
        )
    }

    /// - Parameters:
    ///   - keyPrefix: Start of every key (`PREFIX:{p:PARTNER}:state` and `…:leases`).
    ///   - clock: nil (the default) uses Redis `TIME`; tests inject a manual clock.
    public init(client: RedisClient, keyPrefix: String = "sluice", clock: EpochClock? = nil) {
        self.client = client
        self.keyPrefix = keyPrefix
        self.clock = clock
    }

    /// The keys of a partner, hash-tagged so Redis Cluster stores them in one slot.
    func keys(_ partner: String) -> (state: String, leases: String) {
        let base = "\(keyPrefix):{p:\(partner)}"
        return ("\(base):state", "\(base):leases")
    }

    public func admit(partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration) async throws -> AdmissionDecision {
        let key = partner
        let leads = queues.withLock { queues in
            if queues[key, default: Queue()].callsInProgress >= Self.callsPerPartner { return false }
            queues[key, default: Queue()].callsInProgress += 1
            return true
        }
        if !leads {
            let turn = await withCheckedContinuation { continuation in
                let resumeNow: Bool = queues.withLock { queues in
                    guard queues[key, default: Queue()].callsInProgress >= Self.callsPerPartner else {
                        queues[key, default: Queue()].callsInProgress += 1
                        return true
                    }
                    queues[key]!.waiting.append(Waiting(limits: limits, lease: lease, continuation: continuation))
                    return false
                }
                if resumeNow { continuation.resume(returning: .lead) }
            }
            switch turn {
            case .decided(let decision): return decision
            case .failed(let error): throw error
            case .lead: break
            }
        }
        return try await lead(partner, limits: limits, lease: lease, leaseDuration: leaseDuration)
    }

    /// Makes one call for this request and the ones waiting behind it, answers them, and hands
    /// the queue to the next waiting request (or marks it idle).
    private func lead(_ partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration) async throws -> AdmissionDecision {
        var shared = limits
        shared.cost = 0
        let batch = queues.withLock { queues in
            var taken: [Waiting] = []
            queues[partner]!.waiting.removeAll { waiting in
                var other = waiting.limits
                other.cost = 0
                guard taken.count < Self.batchLimit - 1, other == shared else { return false }
                taken.append(waiting)
                return true
            }
            return taken
        }
        let outcome: Result<[AdmissionDecision], any Error>
        do {
            let requests = [(limits.cost, lease)] + batch.map { ($0.limits.cost, $0.lease) }
            outcome = .success(try await call(partner, shared, requests, leaseDuration: leaseDuration))
        } catch {
            outcome = .failure(error)
        }
        switch outcome {
        case .success(let decisions):
            for (waiting, decision) in zip(batch, decisions.dropFirst()) { waiting.continuation.resume(returning: .decided(decision)) }
        case .failure(let error):
            for waiting in batch { waiting.continuation.resume(returning: .failed(error)) }
        }
        // This call's turn passes on: the first waiting request makes the next call (with the
        // rest behind it); with nobody waiting the turn ends.
        let next: Waiting? = queues.withLock { queues in
            guard !queues[partner]!.waiting.isEmpty else {
                queues[partner]!.callsInProgress -= 1
                if queues[partner]!.callsInProgress == 0 { queues[partner] = nil }
                return nil
            }
            return queues[partner]!.waiting.removeFirst()
        }
        next?.continuation.resume(returning: .lead)
        return try outcome.get()[0]
    }

    private func call(
        _ partner: String, _ limits: AdmissionLimits, _ requests: [(cost: Int, lease: String?)], leaseDuration: Duration
    ) async throws -> [AdmissionDecision] {
        let released = pendingReleases.withLock { $0.removeValue(forKey: partner) ?? [] }
        var arguments: [String] = []
        arguments.reserveCapacity(8 + released.count + 2 * requests.count)
        arguments.append(clock.map { String($0()) } ?? "")
        arguments.append(String(leaseDuration.milliseconds))
        arguments.append(limits.ratePerSecond.map { String($0) } ?? "0")
        arguments.append(String(limits.burst))
        arguments.append(limits.quota.map { String($0) } ?? "0")
        arguments.append(limits.quotaWindow.rawValue)
        arguments.append(limits.concurrency.map { String($0) } ?? "0")
        arguments.append(String(released.count))
        arguments.append(contentsOf: released)
        for request in requests {
            arguments.append(String(request.cost))
            arguments.append(request.lease ?? "")
        }
        let keys = keys(partner)
        let reply: RedisReply
        do {
            reply = try await client.evaluate(AdmissionScripts.admit, keys: [keys.state, keys.leases], arguments: arguments)
        } catch {
            if !released.isEmpty { pendingReleases.withLock { $0[partner, default: []].append(contentsOf: released) } }
            throw error
        }
        return try Self.decisions(from: reply, count: requests.count)
    }

    public func release(partner: String, lease: String) {
        pendingReleases.withLock { $0[partner, default: []].append(lease) }
    }

    public func flushReleases() async {
        let pending = pendingReleases.withLock { pending in
            defer { pending.removeAll() }
            return pending
        }
        await withTaskGroup(of: (String, [String])?.self) { group in
            for (partner, leases) in pending {
                group.addTask {
                    do {
                        _ = try await self.client.send(["ZREM", self.keys(partner).leases] + leases)
                        return nil
                    } catch {
                        return (partner, leases)
                    }
                }
            }
            for await case let (partner, leases)? in group {
                pendingReleases.withLock { $0[partner, default: []].append(contentsOf: leases) }
            }
        }
    }

    public func renew(partner: String, leases: [String], leaseDuration: Duration) async throws {
        guard !leases.isEmpty else { return }
        let arguments = [String(leaseDuration.milliseconds), clock.map { String($0()) } ?? ""] + leases
        let keys = keys(partner)
        _ = try await client.evaluate(AdmissionScripts.renew, keys: [keys.state, keys.leases], arguments: arguments)
    }

    /// Parses the script's reply: seven comma-separated integers per request, `;` between requests.
    static func decisions(from reply: RedisReply, count: Int) throws -> [AdmissionDecision] {
        guard case .string(let bytes) = reply else { throw RedisError.protocolViolation("unexpected admission reply \(reply)") }
        var decisions: [AdmissionDecision] = []
        decisions.reserveCapacity(count)
        var numbers: [Int64] = []
        numbers.reserveCapacity(7)
        var value: Int64 = 0
        var negative = false
        var hasDigits = false
        func finishNumber() throws {
            guard hasDigits else { throw RedisError.protocolViolation("malformed admission reply") }
            numbers.append(negative ? -value : value)
            value = 0
            negative = false
            hasDigits = false
        }
        func finishDecision() throws {
            try finishNumber()
            guard numbers.count == 7, (0..<4).contains(numbers[0]) else { throw RedisError.protocolViolation("malformed admission reply") }
            decisions.append(decision(numbers))
            numbers.removeAll(keepingCapacity: true)
        }
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                value = value * 10 + Int64(byte - UInt8(ascii: "0"))
                hasDigits = true
            case UInt8(ascii: "-"):
                negative = true
            case UInt8(ascii: ","):
                try finishNumber()
            case UInt8(ascii: ";"):
                try finishDecision()
            default:
                throw RedisError.protocolViolation("malformed admission reply")
            }
        }
        try finishDecision()
        guard decisions.count == count else { throw RedisError.protocolViolation("expected \(count) decisions, got \(decisions.count)") }
        return decisions
    }

    private static func decision(_ n: [Int64]) -> AdmissionDecision {
        let verdicts: [AdmissionVerdict] = [.admitted, .rateLimited, .quotaExceeded, .concurrencyLimited]
        var decision = AdmissionDecision(verdict: verdicts[Int(n[0])])
        decision.retryAfterMilliseconds = n[1]
        if n[2] >= 0 {
            decision.tokensRemaining = Int(n[2])
            decision.bucketFullInMilliseconds = n[3]
        }
        if n[4] >= 0 {
            decision.quotaRemaining = Int(n[4])
            decision.quotaResetInMilliseconds = n[5]
            decision.quotaWindowMilliseconds = n[6]
        }
        return decision
    }
}
