import Logging
import NIOCore
import ServiceLifecycle
import SluiceCore
import SluiceStore
import Synchronization

/// What this instance holds in the store while requests run (concurrency leases, idempotency
/// claims), so that it can be renewed: a running request's lease or claim must not expire
/// under it, and a crashed instance's must. Kept per event loop (taken and given back on the
/// loop of its request), so recording one takes no lock; the renewal collects every loop's.
final class HeldRegistry<Entry: Sendable>: Sendable {
    /// Per loop: id → entry.
    private let held: LoopLocal<[String: Entry]>

    init(group: any EventLoopGroup) {
        held = LoopLocal(group: group) { _ in [:] }
    }

    /// Call on `eventLoop`.
    func add(_ id: String, _ entry: Entry, on eventLoop: any EventLoop) {
        held.update(on: eventLoop) { $0[id] = entry }
    }

    /// Call on `eventLoop`, the loop that added it.
    func remove(_ id: String, on eventLoop: any EventLoop) {
        held.update(on: eventLoop) { $0.removeValue(forKey: id) }
    }

    /// Everything held now, with its id.
    func all() async -> [(id: String, entry: Entry)] {
        await held.collect { $0.map { ($0.key, $0.value) } }.flatMap { $0 }
    }
}

/// An idempotency claim a running request holds.
struct HeldClaim: Sendable {
    let partner: String
    let claim: IdempotencyClaimRequest
}

/// Everything the gateway keeps in its store.
typealias SharedStore = ClaimingAdmissionStore & TaskStore & WebhookStore & UsageStore

/// The store a policy names (embedded or Redis), the per-instance fallback used while Redis is
/// unreachable, and the breaker between them. It outlives reloads that keep the store
/// settings, so counters and connections survive a policy edit.
final class StoreBackend: Sendable {
    struct Settings: Equatable {
        var redis: RedisURL?
        var timeout: Duration
        var bulkTimeout: Duration
        var tlsCAPath: String?
    }

    let settings: Settings
    /// Admission decisions, idempotency keys, tasks and webhook messages.
    let store: any SharedStore
    /// The store when it is the embedded one: it decides synchronously.
    let embedded: MemoryStore?
    /// The Redis clients: the request path's fast lane and the bulk lane (`RedisStore.bulk`).
    let redis: RedisClient?
    let bulkRedis: RedisClient?
    /// Per-instance limits while the shared store is unreachable.
    let local: MemoryStore
    let breaker = StoreBreaker()
    /// Concurrency leases held (lease → partner), in the shared store and in the local fallback.
    let leases: HeldRegistry<String>
    let localLeases: HeldRegistry<String>
    /// Idempotency claims held (claim token → claim).
    let claims: HeldRegistry<HeldClaim>

    init(settings: Settings, group: any EventLoopGroup, clock: @escaping EpochClock, metrics: GatewayMetrics) throws {
        self.settings = settings
        local = MemoryStore(clock: clock)
        leases = HeldRegistry(group: group)
        localLeases = HeldRegistry(group: group)
        claims = HeldRegistry(group: group)
        if let url = settings.redis {
            let calls = metrics.storeCalls
            let client = try RedisStore.makeClient(
                url: url, tlsCA: settings.tlsCAPath, timeout: settings.timeout, group: group, onCommand: { calls.increment() }
            )
            let bulk = try RedisStore.makeClient(
                url: url, tlsCA: settings.tlsCAPath, timeout: settings.bulkTimeout, group: group, onCommand: { calls.increment() }
            )
            redis = client
            bulkRedis = bulk
            store = RedisStore(client: client, bulk: bulk)
            embedded = nil
        } else {
            redis = nil
            bulkRedis = nil
            let memory = MemoryStore(clock: clock)
            store = memory
            embedded = memory
        }
    }

    /// Whether the store answers (always true for the embedded one).
    func isReachable() async -> Bool {
        guard let redis else { return true }
        return (try? await redis.send(["PING"])) == .status("PONG")
    }

    /// Opens the Redis connections now (instead of on first use).
    func connect() async {
        await redis?.connect()
        await bulkRedis?.connect()
    }

    /// Closes the Redis connections.
    func shutdown() async {
        await redis?.shutdown()
        await bulkRedis?.shutdown()
    }

    /// Extends every lease still held, in both stores.
    func renewLeases(for duration: Duration, _ trouble: inout FailureStreak) async {
        for (store, registry) in [(store as any AdmissionStore, leases), (local, localLeases)] {
            let byPartner = Dictionary(grouping: await registry.all(), by: \.entry)
            for (partner, held) in byPartner {
                await trouble.attempt("renew concurrency leases") { try await store.renew(partner: partner, leases: held.map(\.id), leaseDuration: duration) }
            }
        }
    }

    /// Extends every idempotency claim still held to its lease from now.
    func renewClaims(_ trouble: inout FailureStreak) async {
        let byPartner = Dictionary(grouping: await claims.all().map(\.entry), by: \.partner)
        for (partner, held) in byPartner {
            await trouble.attempt("renew idempotency claims") { try await store.renewClaims(held.map(\.claim), partner: partner) }
        }
    }
}

/// Hands out store backends for policy sets, reusing one while the store settings stay the same;
/// flushes queued lease releases, renews held leases, and closes replaced Redis clients.
final class StoreRegistry: Service, Sendable {
    private let current = Mutex<StoreBackend?>(nil)
    private let retired = Mutex<[StoreBackend]>([])
    private let group: any EventLoopGroup
    private let leaseDuration: Duration
    /// How much longer than its route's timeout an idempotency claim lasts (renewed every third of it).
    private let claimMargin: Duration
    private let clock: EpochClock
    private let metrics: GatewayMetrics
    private let logger: Logger

    init(
        group: any EventLoopGroup, leaseDuration: Duration, claimMargin: Duration, clock: @escaping EpochClock, metrics: GatewayMetrics,
        logger: Logger
    ) {
        self.claimMargin = claimMargin
        self.logger = logger
        self.group = group
        self.leaseDuration = leaseDuration
        self.clock = clock
        self.metrics = metrics
    }

    func backend(for policy: PolicySet) throws(PolicyErrors) -> StoreBackend {
        let store = policy.gateway.store
        let settings = StoreBackend.Settings(redis: store.redis, timeout: store.timeout, bulkTimeout: store.bulkTimeout, tlsCAPath: store.tlsCAPath)
        if let existing = current.withLock({ $0 }), existing.settings == settings { return existing }
        let backend: StoreBackend
        do {
            backend = try StoreBackend(settings: settings, group: group, clock: clock, metrics: metrics)
        } catch {
            let location = store.location ?? SourceLocation(file: "gateway.yaml", line: 1, column: 1)
            throw PolicyErrors([PolicyProblem(location, "store: cannot set up the Redis client: \(error)")])
        }
        if let replaced = current.withLock({ state in defer { state = backend }; return state }) {
            retired.withLock { $0.append(replaced) }
        }
        return backend
    }

    /// Connects to Redis at once; then every 20 ms applies queued releases, every third of a
    /// lease renews held leases, and every third of the claim margin renews held claims.
    func run() async throws {
        await current.withLock({ $0 })?.connect()
        var lastRenewal = ContinuousClock.now
        var lastClaimRenewal = ContinuousClock.now
        var trouble = FailureStreak("leases and claims", logger: logger, metrics: metrics)
        while await pauseUnlessShuttingDown(for: .milliseconds(20)) {
            guard let backend = current.withLock({ $0 }) else { continue }
            await trouble.attempt("release concurrency leases") { try await backend.store.flushReleases() }
            if ContinuousClock.now - lastRenewal >= leaseDuration / 3 {
                lastRenewal = .now
                await backend.renewLeases(for: leaseDuration, &trouble)
            }
            if ContinuousClock.now - lastClaimRenewal >= claimMargin / 3 {
                lastClaimRenewal = .now
                await backend.renewClaims(&trouble)
            }
            let replaced = retired.withLock { state in
                defer { state = [] }
                return state
            }
            if !replaced.isEmpty { await backend.connect() }
            for old in replaced {
                await trouble.attempt("release concurrency leases") { try await old.store.flushReleases() }
                await old.shutdown()
            }
        }
        if let backend = current.withLock({ $0 }) {
            await trouble.attempt("release concurrency leases") { try await backend.store.flushReleases() }
            await backend.shutdown()
        }
    }
}
