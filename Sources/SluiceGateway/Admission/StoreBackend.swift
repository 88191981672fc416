import Logging
import NIOCore
import ServiceLifecycle
import SluiceCore
import SluiceStore
import Synchronization

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
