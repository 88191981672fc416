import Logging
import NIOCore
import ServiceLifecycle
import SluiceCore
import SluiceStore
import Synchronization

/// Leases this instance holds, so they can be renewed while their requests run. Kept per
/// event loop (a lease is taken and given back on the loop of its request), so recording one
/// takes no lock; the renewal collects them from every loop.
final class LeaseRegistry: Sendable {
    /// Per loop: lease id → partner.
    private let held: LoopLocal<[String: String]>

    init(group: any EventLoopGroup) {
        held = LoopLocal(group: group) { _ in [:] }
    }

    /// Call on `eventLoop`.
    func add(partner: String, lease: String, on eventLoop: any EventLoop) {
        held.update(on: eventLoop) { $0[lease] = partner }
    }

    /// Call on `eventLoop`, the loop that added the lease.
    func remove(lease: String, on eventLoop: any EventLoop) {
        held.update(on: eventLoop) { $0.removeValue(forKey: lease) }
    }

    /// Every lease held now, by partner.
    func byPartner() async -> [String: [String]] {
        var all: [String: [String]] = [:]
        for partners in await held.collect({ $0 }) {
            for (lease, partner) in partners { all[partner, default: []].append(lease) }
        }
        return all
    }
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
    let leases: LeaseRegistry
    let localLeases: LeaseRegistry

    init(settings: Settings, group: any EventLoopGroup, clock: @escaping EpochClock, metrics: GatewayMetrics) throws {
        self.settings = settings
        local = MemoryStore(clock: clock)
        leases = LeaseRegistry(group: group)
        localLeases = LeaseRegistry(group: group)
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
            for (partner, held) in await registry.byPartner() {
                await trouble.attempt("renew concurrency leases") { try await store.renew(partner: partner, leases: held, leaseDuration: duration) }
            }
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
    private let clock: EpochClock
    private let metrics: GatewayMetrics
    private let logger: Logger

    init(group: any EventLoopGroup, leaseDuration: Duration, clock: @escaping EpochClock, metrics: GatewayMetrics, logger: Logger) {
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

    /// Connects to Redis at once; then every 20 ms applies queued releases and every third of a
    /// lease renews held leases.
    func run() async throws {
        await current.withLock({ $0 })?.connect()
        var lastRenewal = ContinuousClock.now
        var trouble = FailureStreak("concurrency leases", logger: logger, metrics: metrics)
        while await pauseUnlessShuttingDown(for: .milliseconds(20)) {
            guard let backend = current.withLock({ $0 }) else { continue }
            await trouble.attempt("release concurrency leases") { try await backend.store.flushReleases() }
            if ContinuousClock.now - lastRenewal >= leaseDuration / 3 {
                lastRenewal = .now
                await backend.renewLeases(for: leaseDuration, &trouble)
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
