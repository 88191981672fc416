import Foundation
import NIOPosix
import SluiceCore
import SluiceStore
import Synchronization
import TestSupport

/// A Redis database of its own for one test's tasks: the gateways of that test share it, and no
/// other test's task workers or webhook senders (which all use the same key names) see its
/// queue. Databases 1-15 of the shared test Redis first, then those of further Redis servers
/// started for the purpose, so that no two tests of a run ever get the same one (a test that
/// got a database handed out again would have it flushed under it). Flushed when handed out,
/// so nothing is left from an earlier run.
enum TaskDatabase {
    private static let handedOut = Atomic<Int>(0)
    /// The servers started beyond the shared one, by index (1, 2, …).
    private static let extraServers = Mutex<[Int: Task<RedisServer, any Error>]>([:])

    static func url() async throws -> String {
        let number = handedOut.add(1, ordering: .relaxed).oldValue
        let serverIndex = number / 15
        var url = try RedisURL.parse(try await serverURL(serverIndex)).get()
        precondition(url.password == nil, "the test Redis has no password")
        url.database = 1 + number % 15
        let client = try RedisClient(url: url, timeout: .seconds(2), group: MultiThreadedEventLoopGroup.singleton)
        _ = try await client.send(["FLUSHDB"])
        await client.shutdown()
        return url.description
    }

    /// The shared test Redis for index 0, else a server started once for `index`.
    private static func serverURL(_ index: Int) async throws -> String {
        guard index > 0 else { return try await RedisServer.sharedURL() }
        let starting = extraServers.withLock { servers in
            if let task = servers[index] { return task }
            let task = Task { () throws -> RedisServer in
                let server = try await RedisServer.start()
                if let pid = server.pid { extraPIDs.withLock { $0.append(pid) } }
                return server
            }
            servers[index] = task
            return task
        }
        return try await starting.value.url
    }

    private static let extraPIDs: Mutex<[pid_t]> = {
        atexit { TaskDatabase.extraPIDs.withLock { pids in for pid in pids { kill(pid, SIGKILL) } } }
        return Mutex([])
    }()
}
