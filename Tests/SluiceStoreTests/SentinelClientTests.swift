import Foundation
import NIOCore
import NIOPosix
import SluiceCore
@testable import SluiceStore
import Testing
import TestSupport

/// The Redis client on a real Sentinel set (a primary, a replica, three sentinels on loopback):
/// it finds the primary, follows a failover without a restart, takes both passwords, and says
/// clearly when the sentinels do not know the master.
@Suite(.serialized)
struct SentinelClientTests {
    private func client(_ url: String) throws -> RedisClient {
        try RedisClient(url: try RedisURL.parse(url).get(), timeout: .seconds(2), group: MultiThreadedEventLoopGroup.singleton)
    }

    private func set(_ client: RedisClient, _ key: String) async throws -> Bool {
        (try? await client.send(["SET", key, "v"])) == .status("OK")
    }

    /// Commands go to the primary the sentinels name; kill -9 of it → the replica is promoted
    /// and the same client writes there (a topology change, "rediscovered"), nothing restarted.
    @Test func followsAFailoverAfterThePrimaryDies() async throws {
        let sentinels = try await SentinelSet.start()
        let client = try client(sentinels.url())
        #expect(try await set(client, "before"))
        #expect(client.primary.current.endpoint?.port == sentinels.servers[0].port)
        // Replication is asynchronous: the write is on the replica only once WAIT says so.
        #expect(try await client.send(["WAIT", "1", "1000"]) == .integer(1))
        try await sentinels.servers[0].stop()
        try await eventually(timeout: .seconds(30), "writes go to the promoted replica") { try await set(client, "after") }
        #expect(client.primary.current.endpoint?.port == sentinels.servers[1].port)
        #expect(client.primary.current.lastChange?.old?.port == sentinels.servers[0].port)
        #expect(try await client.send(["GET", "before"]) == .string(Array("v".utf8)), "the replica had the write")
        await client.shutdown()
    }

    /// A manual failover demotes the primary while the client's connection to it stays open:
    /// the first write there is answered READONLY, and the client moves to the new primary.
    @Test func followsAReadOnlyAnswer() async throws {
        let sentinels = try await SentinelSet.start()
        let client = try client(sentinels.url())
        #expect(try await set(client, "before"))
        let answer = await sentinels.sentinelCommand(sentinels.sentinelPorts[0], ["SENTINEL", "FAILOVER", SentinelSet.masterName])
        #expect(answer.contains("OK"), "\(answer)")
        try await eventually(timeout: .seconds(30), "the sentinels name the replica") { await sentinels.primaryPort() == sentinels.servers[1].port }
        // The old primary takes writes until it is made a replica (the sentinels do that on their
        // next look at it, up to 10 s later; the test does it now): then it answers READONLY.
        _ = await SentinelSet.cli(port: sentinels.servers[0].port, ["REPLICAOF", "127.0.0.1", String(sentinels.servers[1].port)])
        try await eventually(timeout: .seconds(30), "writes go to the new primary") {
            try await set(client, "after") && client.primary.current.endpoint?.port == sentinels.servers[1].port
        }
        let reason = client.primary.current.lastChange?.reason
        #expect(reason == .readOnly || reason == .rediscovered, "\(String(describing: reason))")
        await client.shutdown()
    }

    /// A sentinel that has not yet heard of a failover names the old primary (here: one that is
    /// gone). Listed first, it is passed over: only an address whose `ROLE` says `master` is
    /// taken, and the sentinel that named it is asked first the next time.
    @Test func aSentinelNamingADeadPrimaryIsPassedOver() async throws {
        let sentinels = try await SentinelSet.shared()
        let gone = try freePort()
        let stale = try await FakeRedisNode.start(answering: [
            ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SentinelSet.masterName]: .array([.string(Array("127.0.0.1".utf8)), .string(Array(String(gone).utf8))])
        ])
        let client = try client(sentinels.url().replacingOccurrences(of: "redis+sentinel://", with: "redis+sentinel://127.0.0.1:\(stale.port),"))
        #expect(try await set(client, "stale-sentinel"))
        #expect(stale.commands.contains(["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SentinelSet.masterName]), "the stale sentinel was asked first")
        let primary = await sentinels.primaryPort()
        #expect(client.primary.current.endpoint?.port == primary && primary != gone)
        #expect(client.primary.current.lastChange == nil, "the dead address was never taken as the primary")
        // The sentinel that answered right is asked first from now on. (As after a READONLY
        // answer: every connection goes, and the next one asks the sentinels.)
        client.primary.answeredReadOnly()
        #expect(try await set(client, "asked-again"))
        #expect(stale.commands.count == 1, "\(stale.commands)")
        await client.shutdown()
        try await stale.stop()
    }

    /// A subscribed watcher moves the primary on `+switch-master` before any command fails.
    @Test func followsSwitchMasterAnnouncements() async throws {
        let sentinels = try await SentinelSet.start()
        let client = try client(sentinels.url())
        #expect(try await set(client, "before"))
        let watcher = Task { await client.primary.watch(on: MultiThreadedEventLoopGroup.singleton.any(), timeout: .seconds(1)) }
        try await eventually("the watcher subscribed") {
            // (Sentinels have no PUBSUB command; their client list shows the subscription.)
            for port in sentinels.sentinelPorts where await sentinels.sentinelCommand(port, ["CLIENT", "LIST"]).contains(" sub=1 ") {
                return true
            }
            return false
        }
        _ = await sentinels.sentinelCommand(sentinels.sentinelPorts[0], ["SENTINEL", "FAILOVER", SentinelSet.masterName])
        try await eventually(timeout: .seconds(30), "the announcement moved the primary") {
            client.primary.current.endpoint?.port == sentinels.servers[1].port
        }
        #expect(client.primary.current.lastChange?.reason == .switchMaster)
        #expect(try await set(client, "after"))
        watcher.cancel()
        await watcher.value
        await client.shutdown()
    }

    /// Redis and sentinels with passwords of their own: both are used.
    @Test func redisAndSentinelPasswords() async throws {
        let sentinels = try await SentinelSet.start(password: "redis-secret", sentinelPassword: "sentinel-secret")
        let good = try client(sentinels.url(credentials: ":redis-secret@", query: "?sentinel_password=sentinel-secret"))
        #expect(try await set(good, "k"))
        await good.shutdown()
        let noSentinelPassword = try client(sentinels.url(credentials: ":redis-secret@"))
        await #expect(throws: RedisError.self) { try await noSentinelPassword.send(["SET", "k", "v"]) }
        await noSentinelPassword.shutdown()
    }

    /// A master name the sentinels do not know fails every call with that reason (and nothing hangs).
    @Test func unknownMasterNameIsSaid() async throws {
        let sentinels = try await SentinelSet.shared()
        let client = try client(sentinels.url().replacingOccurrences(of: "/\(SentinelSet.masterName)/", with: "/nobody/"))
        do {
            _ = try await client.send(["PING"])
            Issue.record("PING answered")
        } catch {
            #expect("\(error)".contains("does not know the master 'nobody'"), "\(error)")
        }
        await client.shutdown()
    }
}
