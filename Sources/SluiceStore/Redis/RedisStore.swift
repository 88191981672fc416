public import NIOCore
public import SluiceCore
import Synchronization

/// The shared store on Redis: any number of gateways enforce one limit per partner.
///
/// An admission decision is one `EVALSHA` (one round trip) using the server's `TIME`. Lease
/// releases are queued and ride along with the partner's next admission (or go out in a batch
/// on `flushReleases()`), so under load they cost no extra round trip.
public final class RedisStore: AdmissionStore {
    private let client: RedisClient
    private let keyPrefix: String
    private let clock: EpochClock?
    private let pendingReleases = Mutex<[String: [String]]>([:])

    /// A client for this store: it loads the admission scripts whenever it opens a connection.
    public static func makeClient(url: RedisURL, tlsCA: String?, timeout: Duration, group: any EventLoopGroup) throws -> RedisClient {
        try RedisClient(url: url, tlsCA: tlsCA, timeout: timeout, connections: 2, scripts: [AdmissionScripts.admit, AdmissionScripts.renew], group: group)
    }

    /// - Parameters:
    ///   - keyPrefix: Start of every key (`PREFIX:{p:PARTNER}:bucket` …).
    ///   - clock: nil (the default) uses Redis `TIME`; tests inject a manual clock.
    public init(client: RedisClient, keyPrefix: String = "sluice", clock: EpochClock? = nil) {
        self.client = client
        self.keyPrefix = keyPrefix
        self.clock = clock
    }

    /// The three keys of a partner, hash-tagged so Redis Cluster stores them in one slot.
    func keys(_ partner: String) -> [String] {
        let base = "\(keyPrefix):{p:\(partner)}"
        return ["\(base):bucket", "\(base):quota", "\(base):leases"]
    }

    public func admit(partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration) async throws -> AdmissionDecision {
        let released = pendingReleases.withLock { $0.removeValue(forKey: partner) ?? [] }
        var arguments: [String] = []
        arguments.reserveCapacity(9 + released.count)
        arguments.append(limits.ratePerSecond.map { String($0) } ?? "0")
        arguments.append(String(limits.burst))
        arguments.append(String(limits.cost))
        arguments.append(limits.quota.map { String($0) } ?? "0")
        arguments.append(limits.quotaWindow.rawValue)
        arguments.append(limits.concurrency.map { String($0) } ?? "0")
        arguments.append(lease ?? "")
        arguments.append(String(leaseDuration.milliseconds))
        arguments.append(clock.map { String($0()) } ?? "")
        arguments.append(contentsOf: released)
        let reply: RedisReply
        do {
            reply = try await client.evaluate(AdmissionScripts.admit, keys: keys(partner), arguments: arguments)
        } catch {
            if !released.isEmpty { pendingReleases.withLock { $0[partner, default: []].append(contentsOf: released) } }
            throw error
        }
        return try Self.decision(from: reply)
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
                        _ = try await self.client.send(["ZREM", self.keys(partner)[2]] + leases)
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
        _ = try await client.evaluate(AdmissionScripts.renew, keys: [keys(partner)[2]], arguments: arguments)
    }

    static func decision(from reply: RedisReply) throws -> AdmissionDecision {
        guard case .array(let items) = reply, items.count == 7 else {
            throw RedisError.protocolViolation("unexpected admission reply \(reply)")
        }
        let numbers = try items.map { item -> Int64 in
            guard case .integer(let value) = item else { throw RedisError.protocolViolation("unexpected admission reply \(reply)") }
            return value
        }
        let verdicts: [AdmissionVerdict] = [.admitted, .rateLimited, .quotaExceeded, .concurrencyLimited]
        guard numbers[0] >= 0, numbers[0] < 4 else { throw RedisError.protocolViolation("unknown verdict \(numbers[0])") }
        var decision = AdmissionDecision(verdict: verdicts[Int(numbers[0])])
        decision.retryAfterMilliseconds = numbers[1]
        if numbers[2] >= 0 {
            decision.tokensRemaining = Int(numbers[2])
            decision.bucketFullInMilliseconds = numbers[3]
        }
        if numbers[4] >= 0 {
            decision.quotaRemaining = Int(numbers[4])
            decision.quotaResetInMilliseconds = numbers[5]
            decision.quotaWindowMilliseconds = numbers[6]
        }
        return decision
    }
}
