import NIOPosix
import SluiceCore
import SluiceStore

/// The CLI's way into the store the policies name.
enum OpsStore {
    /// Ops commands read more than a request does: they wait at least this long for Redis.
    static let minimumTimeout: Duration = .seconds(5)

    /// Loads the policies in `directory` and connects to their Redis store; nil when they use
    /// the embedded store (its state lives in the running gateway).
    /// - Throws: `PolicyErrors` for invalid policies, or when the Redis client cannot be set up.
    static func open(policiesDirectory directory: String, environment: [String: String]) throws -> (policy: PolicySet, store: RedisStore, client: RedisClient)? {
        let policy = try PolicyLoader.load(directory: directory, environment: environment)
        let settings = policy.gateway.store
        guard let url = settings.redis else { return nil }
        let client = try RedisStore.makeClient(
            url: url, tlsCA: settings.tlsCAPath, timeout: max(settings.timeout, minimumTimeout), group: MultiThreadedEventLoopGroup.singleton
        )
        return (policy, RedisStore(client: client, taskShards: policy.gateway.tasks.shards), client)
    }
}
