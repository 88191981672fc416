import Logging
import NIOCore
import ServiceLifecycle
import SluiceCore
import SluiceStore
import Synchronization

/// Everything the gateway keeps in its store.
typealias SharedStore = ClaimingAdmissionStore & TaskStore & WebhookStore & UsageStore & ResponseCacheStore

/// The store a policy names (embedded or Redis), the per-instance fallback used while Redis is
/// unreachable, and the breaker between them. It outlives reloads that keep the store
/// settings, so counters and connections survive a policy edit.
final class StoreBackend: Sendable {
    struct Settings: Equatable {
        var redis: RedisURL?
        var timeout: Duration
        var bulkTimeout: Duration
        var tlsCAPath: String?
        var durability: GatewayPolicy.Durability = .primary
        var replicaTimeout: Duration = .milliseconds(200)
        var taskShards = RedisStore.defaultTaskShards
    }

    /// How often a cluster's slot map is read again besides on `MOVED` and lost connections.
    static let clusterRefreshInterval: Duration = .seconds(5)

    let settings: Settings
    /// Admission decisions, idempotency keys, tasks and webhook messages.
    let store: any SharedStore
    /// The store when it is the embedded one: it decides synchronously.
    let embedded: MemoryStore?
    /// The Redis clients: the request path's fast lane and the bulk lane (`RedisStore.bulk`).
    let redis: RedisClient?
    let bulkRedis: RedisClient?
    /// Where the Redis clients' connections go (a Sentinel-found primary follows failovers).
    let primary: RedisPrimary?
    /// The `+switch-master` subscription of a Sentinel store, from `connect` to `shutdown`.
    private let watcher = Mutex<Task<Void, Never>?>(nil)
    private let watchLoop: any EventLoop
    private let metrics: GatewayMetrics
    private let logger: Logger
    /// Per-instance limits while the shared store is unreachable.
    let local: MemoryStore
    let breaker: StoreBreaker
    /// Concurrency leases held (lease → partner), in the shared store and in the local fallback.
    let leases: HeldRegistry<String>
    let localLeases: HeldRegistry<String>
    /// Idempotency claims held (claim token → claim).
    let claims: HeldRegistry<HeldClaim>

    init(settings: Settings, group: any EventLoopGroup, clock: @escaping EpochClock, metrics: GatewayMetrics, logger: Logger) throws {
        self.settings = settings
        local = MemoryStore(clock: clock)
        leases = HeldRegistry(group: group)
        localLeases = HeldRegistry(group: group)
        claims = HeldRegistry(group: group)
        watchLoop = group.any()
        self.metrics = metrics
        self.logger = logger
        let breaker = StoreBreaker()
        self.breaker = breaker
        if let url = settings.redis {
            let calls = metrics.storeCalls
            let primary = try RedisStore.makePrimary(
                url: url, tlsCA: settings.tlsCAPath, logger: logger,
                onChange: { change in
                    metrics.storeTopologyChanged(reason: change.reason.rawValue)
                    breaker.storeMoved()
                },
                onClusterChange: { reason in
                    metrics.storeTopologyChanged(reason: reason.rawValue)
                    breaker.storeMoved()
                },
                onRedirect: { metrics.storeRedirected(kind: $0) }
            )
            let replicaTimeout = settings.durability == .replicated ? settings.replicaTimeout : nil
            let client = try RedisStore.makeClient(
                url: url, tlsCA: settings.tlsCAPath, timeout: settings.timeout, group: group, primary: primary, replicaTimeout: replicaTimeout,
                onCommand: { calls.increment() }
            )
            let bulk = try RedisStore.makeClient(
                url: url, tlsCA: settings.tlsCAPath, timeout: settings.bulkTimeout, group: group, primary: primary, replicaTimeout: replicaTimeout,
                onCommand: { calls.increment() }
            )
            self.primary = primary
            redis = client
            bulkRedis = bulk
            store = RedisStore(client: client, bulk: bulk, taskShards: settings.taskShards)
            embedded = nil
        } else {
            primary = nil
            redis = nil
            bulkRedis = nil
            let memory = MemoryStore(clock: clock)
            store = memory
            embedded = memory
        }
    }

    /// Whether the store answers (always true for the embedded one); a cluster must have every
    /// slot served and each primary answer.
    func isReachable() async -> Bool {
        guard let redis else { return true }
        if let cluster = primary?.cluster {
            guard let map = cluster.current.map, map.coversEverySlot,
                let holders = try? await redis.keyHolders(), !holders.isEmpty
            else { return false }
            for node in holders where (try? await redis.send(["PING"], at: node)) != .status("PONG") { return false }
            return true
        }
        return (try? await redis.send(["PING"])) == .status("PONG")
    }

    /// Opens the Redis connections now (instead of on first use); on Sentinel, starts following
    /// its failover announcements; on a cluster, reads the slot map every few seconds.
    func connect() async {
        let loop = watchLoop
        let timeout = max(settings.timeout * 4, .milliseconds(250))
        if let primary, primary.isSentinel {
            watcher.withLock { watcher in
                if watcher == nil { watcher = Task { await primary.watch(on: loop, timeout: timeout) } }
            }
        }
        if let cluster = primary?.cluster {
            watcher.withLock { watcher in
                if watcher == nil { watcher = Task { await cluster.watch(on: loop, every: Self.clusterRefreshInterval, timeout: timeout) } }
            }
        }
        await redis?.connect()
        await bulkRedis?.connect()
        await checkReplicas()
        await checkTaskLayout()
    }

    /// Logs an error when the store's tasks were written with another `tasks.shards`: this
    /// instance would not find them (README "Store layout changes").
    private func checkTaskLayout() async {
        guard let redisStore = store as? RedisStore, let layout = try? await redisStore.checkTaskLayout() else { return }
        let problem: String
        switch layout {
        case .matches: return
        case .otherShardCount(let stored): problem = "the store's tasks use tasks.shards: \(stored)"
        case .legacy16: problem = "the store holds tasks of gateways from before tasks.shards (16 shards)"
        }
        logger.error(
            "\(problem), this instance has \(settings.taskShards): it cannot find those tasks; set tasks.shards to match, or drain the queue first (README: Store layout changes)",
            metadata: ["redis": .string(settings.redis?.description ?? "")]
        )
    }

    /// With `durability: replicated`: counts the primary's replicas (`sluice_store_replicas`) and
    /// warns when there are none — then every durable write fails after `replica_timeout`.
    private func checkReplicas() async {
        guard settings.durability == .replicated, let redis, case .string(let bytes)? = try? await redis.send(["INFO", "replication"]) else { return }
        let line = String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isNewline).first { $0.hasPrefix("connected_slaves:") }
        let replicas = line.flatMap { Int($0.dropFirst("connected_slaves:".count)) } ?? 0
        metrics.storeReplicas(replicas)
        if replicas == 0 {
            logger.warning(
                "store.durability is replicated but the Redis primary has no replica: writes partners are told about will fail (503) until one connects",
                metadata: ["redis": .string(settings.redis?.description ?? "")]
            )
        }
    }

    /// Stops following failovers and closes the Redis connections.
    func shutdown() async {
        let watching = watcher.withLock { watcher in
            defer { watcher = nil }
            return watcher
        }
        watching?.cancel()
        await watching?.value
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
