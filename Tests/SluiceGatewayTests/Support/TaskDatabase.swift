import NIOPosix
import SluiceCore
import SluiceStore
import Synchronization
import TestSupport

/// A database of the shared test Redis for one test's tasks: the gateways of that test share
/// it, and no other test's task workers or webhook senders (which all use the same key names)
/// see its queue. Flushed when handed out, so nothing is left from an earlier run.
enum TaskDatabase {
    private static let handedOut = Atomic<Int>(0)

    /// The URL of the next of databases 1-15 (database 0 is the shared one of the other tests).
    static func url() async throws -> String {
        var url = try RedisURL.parse(try await RedisServer.sharedURL()).get()
        precondition(url.password == nil, "the test Redis has no password")
        url.database = 1 + handedOut.add(1, ordering: .relaxed).oldValue % 15
        let client = try RedisClient(url: url, timeout: .seconds(2), group: MultiThreadedEventLoopGroup.singleton)
        _ = try await client.send(["FLUSHDB"])
        await client.shutdown()
        return url.description
    }
}
