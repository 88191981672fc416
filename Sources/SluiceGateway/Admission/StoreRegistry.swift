import Logging
import NIOCore
import ServiceLifecycle
import SluiceCore
import SluiceStore
import Synchronization

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
        let settings = StoreBackend.Settings(
            redis: store.redis, timeout: store.timeout, bulkTimeout: store.bulkTimeout, tlsCAPath: store.tlsCAPath, durability: store.durability,
            replicaTimeout: store.replicaTimeout, taskShards: policy.gateway.tasks.shards
        )
        if let existing = current.withLock({ $0 }), existing.settings == settings { return existing }
        let backend: StoreBackend
        do {
            backend = try StoreBackend(settings: settings, group: group, clock: clock, metrics: metrics, logger: logger)
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
