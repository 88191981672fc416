import Synchronization

/// State split over 16 locks by key, so that callers with different keys (partners, idempotency
/// keys) rarely wait for each other.
final class Sharded<State>: Sendable {
    private final class Shard: Sendable {
        let state: Mutex<State>
        init(_ state: consuming sending State) { self.state = Mutex(state) }
    }

    private let shards: [Shard]

    init(_ makeState: () -> sending State) {
        var shards: [Shard] = []
        for _ in 0..<16 { shards.append(Shard(makeState())) }
        self.shards = shards
    }

    /// Runs `body` on the state of `key`'s shard, under its lock.
    func withLock<Result>(_ key: String, _ body: (inout sending State) -> sending Result) -> sending Result {
        var hasher = Hasher()
        hasher.combine(key)
        return shards[Int(UInt(bitPattern: hasher.finalize()) % UInt(shards.count))].state.withLock(body)
    }
}
