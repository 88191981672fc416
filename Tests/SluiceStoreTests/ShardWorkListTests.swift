@testable import SluiceStore
import Testing

/// The shards a poll left work in are taken from again only while the last check is recent.
struct ShardWorkListTests {
    @Test func listedShardsServeUntilTheRecheck() {
        let start = ContinuousClock.now
        var list = ShardWorkList()
        #expect(list.current(at: start) == nil, "never checked: ask every shard")
        list.checked(at: start)
        #expect(list.current(at: start) == nil, "nothing listed: ask every shard")
        list.shards = [7, 3]
        #expect(list.current(at: start + .milliseconds(100)) == [7, 3])
        #expect(list.current(at: start + ShardWorkList.recheckAfter) == nil, "a backlog in 7 and 3 must not hide the other shards")
        list.checked(at: start + ShardWorkList.recheckAfter)
        #expect(list.current(at: start + ShardWorkList.recheckAfter + .milliseconds(1)) == [7, 3])
    }
}
