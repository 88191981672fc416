public import Logging
public import NIOCore
public import SluiceCore
import Synchronization

/// The shared store on Redis: any number of gateways enforce one limit per partner.
///
/// Decisions are made by one Lua script using the server's `TIME`. Requests of one partner
/// that arrive on an event loop while that loop's calls for the partner are under way are
/// decided together by the next call (in arrival order), so each request costs at most one
/// round trip and a busy partner far less. All of this state lives per event loop and is only
/// touched there (the client's connection of that loop carries the calls), so a decision takes
/// no lock. Lease releases are queued on their loop and ride along with the partner's next call
/// from it (or go out in a batch on `flushReleases()`). A request with an idempotency key has it
/// claimed by the call that admits it, and the partner's pending records ride along too
/// (`IdempotencyScripts`), so a keyed request costs no round trip of its own before it runs.
public final class RedisStore: AdmissionStore {
    fileprivate struct Waiting {
        /// Requests decided together share their limits (all of a partner's, barring a reload).
        let limits: AdmissionLimits
        let lease: String?
        /// An idempotency key to claim when the request is admitted: its Redis key, token and lease ms.
        let claim: (key: String, token: String, lease: String)?
        let completion: Completion
    }

    /// Who waits for a decision: a plain admission or one that claims too.
    fileprivate enum Completion {
        case decision((Result<AdmissionDecision, any Error>) -> Void)
        case withClaim((Result<AdmissionWithClaim, any Error>) -> Void)

        func callAsFunction(_ result: Result<AdmissionWithClaim, any Error>) {
            switch self {
            case .decision(let completion): completion(result.map(\.decision))
            case .withClaim(let completion): completion(result)
            }
        }
    }

    fileprivate struct Queue {
        var waiting: [Waiting] = []
        var callsInProgress = 0
    }

    /// One event loop's queues, releases, idempotency records and partner keys; only touched on that loop.
    final class LoopState: @unchecked Sendable {
        fileprivate var queues: [String: Queue] = [:]
        var pendingReleases: [String: [String]] = [:]
        var keys: [String: [String]] = [:]
        /// Idempotency claims and records of the current tick, by partner.
        var idempotencyBatches: [String: IdempotencyBatch] = [:]
        /// A look at the batches is scheduled for the end of this tick.
        var idempotencyLookScheduled = false
        /// Response-cache entries this loop read or stored lately.
        var nearCache = NearCacheEntries()
    }

    /// Most requests per call (Lua's `unpack` limit and reply size stay small).
    static let batchLimit = 256
    /// Calls per partner and loop under way at once: a second one keeps the pipe full while the
    /// first travels; Redis runs them one after the other, so decisions stay atomic and in order.
    static let callsPerPartner = 2

    /// The fast lane: admission, idempotency, usage (small commands, a short deadline).
    let client: RedisClient
    /// The bulk lane, on connections of its own with a longer deadline: tasks and their bodies,
    /// results and webhook messages (up to megabytes), so a large write never sits in front of
    /// a partner's admission nor has a 50 ms deadline.
    let bulk: RedisClient
    let keyPrefix: String
    let clock: EpochClock?
    let loops: LoopLocal<LoopState>
    /// Where the next check for task or webhook work starts (rotates, so every shard gets its turn first).
    let nextCheckedShard = Atomic<Int>(0)
    /// The shards the last task poll left work in.
    let taskWork = Mutex(ShardWorkList())
    /// The shards the last webhook poll left due messages in.
    let dueWork = Mutex(ShardWorkList())
    /// Set when the cluster refused a shard check over several slots (Redis < 7 has no script
    /// flags): checks go one shard per call from then on.
    let nodeChecksRefused = Atomic<Bool>(false)
    /// Task queue shards (`tasks.shards`): every instance of one store must use the same number.
    public let taskShards: Int

    /// A client for this store: it loads the admission, idempotency and task scripts whenever it opens a connection.
    /// - Parameter onCommand: Called for every command sent to Redis (to count round trips).
    public static func makeClient(
        url: RedisURL, tlsCA: String?, timeout: Duration, group: any EventLoopGroup, primary: RedisPrimary? = nil,
        replicaTimeout: Duration? = nil, onCommand: (@Sendable () -> Void)? = nil
    ) throws -> RedisClient {
        try RedisClient(
            url: url, tlsCA: tlsCA, timeout: timeout, scripts: [AdmissionScripts.admit, AdmissionScripts.renew] + IdempotencyScripts.all + TaskScripts.all + [UsageScripts.add], group: group,
            primary: primary, replicaTimeout: replicaTimeout, onCommand: onCommand
        )
    }

    /// The primary (or cluster slot map) every client of one store shares (`RedisPrimary`);
    /// `onChange` hears of every change of primary, `onClusterChange` of every change of a
    /// cluster's slot map, `onRedirect` of every `MOVED`/`ASK` (`moved`, `ask`).
    public static func makePrimary(
        url: RedisURL, tlsCA: String?, logger: Logger, onChange: @escaping @Sendable (RedisPrimary.Change) -> Void,
        onClusterChange: @escaping @Sendable (RedisCluster.ChangeReason) -> Void = { _ in }, onRedirect: @escaping @Sendable (String) -> Void = { _ in }
    ) throws -> RedisPrimary {
        RedisPrimary(
            url: url, tls: try RedisClient.tlsContext(for: url, ca: tlsCA), logger: logger, onChange: onChange, onClusterChange: onClusterChange,
            onRedirect: onRedirect
        )
    }

    /// - Parameters:
    ///   - bulk: The client for task and webhook work (default: `client`); the gateway gives it
    ///     connections and a deadline of their own (`store.bulk_timeout`).
    ///   - keyPrefix: Start of every key (`PREFIX:{p:PARTNER}:state` and `…:leases`).
    ///   - clock: nil (the default) uses Redis `TIME`; tests inject a manual clock.
    ///   - taskShards: Task queue shards (`tasks.shards`).
    public init(
        client: RedisClient, bulk: RedisClient? = nil, keyPrefix: String = "sluice", clock: EpochClock? = nil, taskShards: Int = RedisStore.defaultTaskShards
    ) {
        self.client = client
        self.taskShards = max(1, taskShards)
        self.bulk = bulk ?? client
        self.keyPrefix = keyPrefix
        self.clock = clock
        loops = LoopLocal(eventLoops: client.eventLoops) { _ in LoopState() }
    }

    public var defaultEventLoop: any EventLoop { client.defaultEventLoop }

    /// The keys of a partner, hash-tagged so Redis Cluster stores them in one slot.
    func keys(_ partner: String) -> (state: String, leases: String) {
        let base = "\(keyPrefix):{p:\(partner)}"
        return ("\(base):state", "\(base):leases")
    }

    public func admit(
        partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<AdmissionDecision, any Error>) -> Void
    ) {
        admit(partner, Waiting(limits: limits, lease: lease, claim: nil, completion: .decision(completion)), leaseDuration: leaseDuration, on: eventLoop)
    }

    /// The claim is made by the admission call itself, right after the request's verdict.
    public func admit(
        partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration, claiming: IdempotencyClaimRequest,
        on eventLoop: any EventLoop, completion: @escaping (Result<AdmissionWithClaim, any Error>) -> Void
    ) {
        let claim = (idempotencyKey(partner, claiming.key), claiming.token, String(claiming.lease.milliseconds))
        admit(partner, Waiting(limits: limits, lease: lease, claim: claim, completion: .withClaim(completion)), leaseDuration: leaseDuration, on: eventLoop)
    }

    private func admit(_ partner: String, _ request: Waiting, leaseDuration: Duration, on eventLoop: any EventLoop) {
        guard let loop = loops[eventLoop] else {
            // A caller outside the client's group: decided on the default loop, answered on its own.
            let fallback = defaultEventLoop
            let answer = NIOLoopBound(request.completion, eventLoop: eventLoop)
            let (limits, lease, claim) = (request.limits, request.lease, request.claim)
            fallback.execute {
                let moved = Waiting(limits: limits, lease: lease, claim: claim, completion: .withClaim { result in
                    eventLoop.execute { answer.value(result) }
                })
                self.admit(partner, moved, leaseDuration: leaseDuration, on: fallback)
            }
            return
        }
        eventLoop.assertInEventLoop()
        if loop.queues[partner, default: Queue()].callsInProgress >= Self.callsPerPartner {
            loop.queues[partner]!.waiting.append(request)
        } else {
            loop.queues[partner, default: Queue()].callsInProgress += 1
            call(partner, leading: request, loop: loop, leaseDuration: leaseDuration, on: eventLoop)
        }
    }

    /// Makes one call for `first` and the waiting requests with the same limits; when it is
    /// answered, the next waiting request (if any) leads the next call.
    private func call(_ partner: String, leading first: Waiting, loop: LoopState, leaseDuration: Duration, on eventLoop: any EventLoop) {
        var shared = first.limits
        shared.cost = 0
        var batch = [first]
        loop.queues[partner]!.waiting.removeAll { waiting in
            var other = waiting.limits
            other.cost = 0
            guard batch.count < Self.batchLimit, other == shared else { return false }
            batch.append(waiting)
            return true
        }
        let released = loop.pendingReleases.removeValue(forKey: partner) ?? []
        let claiming = batch.contains { $0.claim != nil }
        // The partner's pending idempotency records and claims ride along.
        let riding = loop.idempotencyBatches.removeValue(forKey: partner)
        var arguments: [String] = []
        arguments.reserveCapacity(
            8 + released.count + (claiming ? 4 : 2) * batch.count + (riding.map { 3 + 3 * $0.records.count + 2 * $0.claims.count } ?? 0)
        )
        arguments.append(clock.map { String($0()) } ?? "")
        arguments.append(String(leaseDuration.milliseconds))
        arguments.append(shared.ratePerSecond.map { String($0) } ?? "0")
        arguments.append(String(shared.burst))
        arguments.append(shared.quota.map { String($0) } ?? "0")
        arguments.append(shared.quotaWindow.rawValue)
        arguments.append(shared.concurrency.map { String($0) } ?? "0")
        arguments.append(String(released.count))
        arguments.append(contentsOf: released)
        var keys = loop.keys[partner] ?? {
            let keys = self.keys(partner)
            loop.keys[partner] = [keys.state, keys.leases]
            return [keys.state, keys.leases]
        }()
        if claiming || riding != nil { keys.reserveCapacity(2 + batch.count + (riding?.count ?? 0)) }
        for request in batch {
            arguments.append(String(request.limits.cost))
            arguments.append(request.lease ?? "")
            guard claiming else { continue }
            arguments.append(request.claim?.token ?? "")
            arguments.append(request.claim?.lease ?? "")
            if let claim = request.claim { keys.append(claim.key) }
        }
        let requests = batch
        if let riding {
            let argc = arguments.count
            append(riding, keys: &keys, arguments: &arguments)
            arguments.append(String(argc))
        }
        let script =
            switch (claiming, riding != nil) {
            case (false, false): AdmissionScripts.admit
            case (false, true): IdempotencyScripts.admitAndBatch
            case (true, false): IdempotencyScripts.admitClaiming
            case (true, true): IdempotencyScripts.admitClaimingAndBatch
            }
        client.evaluate(script, keys: keys, arguments: arguments, durable: false, on: eventLoop).assumeIsolatedUnsafeUnchecked().whenComplete { result in
            let answers = result.flatMap { reply in
                Result { try Self.answers(from: reply, for: requests, claiming: claiming, riding: riding) }
            }
            switch answers {
            case .success(let answers):
                for (request, answer) in zip(requests, answers) { request.completion(answer) }
            case .failure(let error):
                if let riding { Self.fail(riding, error) }
                if !released.isEmpty { loop.pendingReleases[partner, default: []].append(contentsOf: released) }
                for request in requests { request.completion(.failure(error)) }
            }
            // This call's turn passes on to the first waiting request, or the turn ends.
            if loop.queues[partner]?.waiting.isEmpty == false {
                let next = loop.queues[partner]!.waiting.removeFirst()
                self.call(partner, leading: next, loop: loop, leaseDuration: leaseDuration, on: eventLoop)
            } else {
                loop.queues[partner]?.callsInProgress -= 1
                if loop.queues[partner]?.callsInProgress == 0 {
                    loop.queues[partner] = nil
                    // No admission call left to ride with: pending records and claims go alone.
                    if let waiting = loop.idempotencyBatches.removeValue(forKey: partner) { self.send(waiting, on: eventLoop) }
                }
            }
        }
    }

    /// Splits an admission call's reply: the decisions (a string alone, or first of an array),
    /// then one claim per request that has one, then the riding batch's results (handed to it
    /// here). Returns each request's answer.
    private static func answers(
        from reply: RedisReply, for requests: [Waiting], claiming: Bool, riding: IdempotencyBatch?
    ) throws -> [Result<AdmissionWithClaim, any Error>] {
        guard claiming || riding != nil else {
            return try decisions(from: reply, count: requests.count).map { .success(AdmissionWithClaim(decision: $0, claim: nil)) }
        }
        guard case .array(let replies) = reply, let first = replies.first else {
            throw RedisError.protocolViolation("unexpected admission reply \(reply)")
        }
        let decisions = try decisions(from: first, count: requests.count)
        var claims = replies.dropFirst()
        var answers: [Result<AdmissionWithClaim, any Error>] = []
        answers.reserveCapacity(requests.count)
        for (request, decision) in zip(requests, decisions) {
            guard request.claim != nil else {
                answers.append(.success(AdmissionWithClaim(decision: decision, claim: nil)))
                continue
            }
            guard let claimReply = claims.popFirst() else { throw RedisError.protocolViolation("missing idempotency claim reply") }
            answers.append(Result { AdmissionWithClaim(decision: decision, claim: claimReply == .integer(0) ? nil : try claim(from: claimReply)) })
        }
        if let riding { complete(riding, claims) }
        return answers
    }

    /// Whether an admission call of `partner` is under way on this loop (so a next one, or the
    /// end of the last one, comes soon).
    func admissionCallIsUnderWay(_ partner: String, loop: LoopState) -> Bool {
        (loop.queues[partner]?.callsInProgress ?? 0) > 0
    }

    public func release(partner: String, lease: String, on eventLoop: any EventLoop) {
        guard let loop = loops[eventLoop] else { return release(partner: partner, lease: lease) }
        eventLoop.assertInEventLoop()
        loop.pendingReleases[partner, default: []].append(lease)
    }

    public func flushReleases() async throws {
        var failure: (any Error)?
        for eventLoop in client.eventLoops {
            guard let loop = loops[eventLoop] else { continue }
            let pending = try? await eventLoop.submit { () -> [String: [String]] in
                defer { loop.pendingReleases.removeAll() }
                return loop.pendingReleases
            }.get()
            for (partner, leases) in pending ?? [:] {
                do {
                    _ = try await client.send(["ZREM", keys(partner).leases] + leases, on: eventLoop).get()
                } catch {
                    eventLoop.execute { loop.pendingReleases[partner, default: []].append(contentsOf: leases) }
                    failure = failure ?? error
                }
            }
        }
        if let failure { throw failure }
    }

    public func renew(partner: String, leases: [String], leaseDuration: Duration) async throws {
        guard !leases.isEmpty else { return }
        let arguments = [String(leaseDuration.milliseconds), clock.map { String($0()) } ?? ""] + leases
        let keys = keys(partner)
        let eventLoop = defaultEventLoop
        _ = try await client.evaluate(AdmissionScripts.renew, keys: [keys.state, keys.leases], arguments: arguments, durable: false, on: eventLoop).get()
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
