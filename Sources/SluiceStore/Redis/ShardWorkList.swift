/// The shards a poll found work in and did not empty (it took all it could hold): the next poll
/// takes from them without asking every shard again — one small call per shard on a cluster —
/// until `recheckAfter` has passed since the last check, so that a shard with a long backlog
/// cannot keep work in the other shards waiting.
struct ShardWorkList: Sendable {
    /// How long a list of shards with work is taken from before every shard is asked again.
    static let recheckAfter: Duration = .milliseconds(250)

    var shards: [Int] = []
    private var checkedAt: ContinuousClock.Instant?

    /// The listed shards, or nil when every shard should be asked: none are listed, or the
    /// list is older than `recheckAfter`.
    func current(at now: ContinuousClock.Instant) -> [Int]? {
        guard !shards.isEmpty, let checkedAt, now - checkedAt < Self.recheckAfter else { return nil }
        return shards
    }

    /// Records that every shard was asked at `instant`.
    mutating func checked(at instant: ContinuousClock.Instant) { checkedAt = instant }
}
