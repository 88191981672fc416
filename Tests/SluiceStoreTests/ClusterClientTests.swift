import Foundation
import NIOCore
import NIOPosix
import SluiceCore
@testable import SluiceStore
import Synchronization
import Testing
import TestSupport

/// The store on a real Redis Cluster (SPEC §8): slots, redirects, the slot map, and keys of
/// every feature spread over the primaries. The contract suites run on the shared cluster too
/// (`StoreKind.cluster`); tests that move slots start a cluster of their own.
@Suite(.serialized)
struct ClusterClientTests {
    /// A store with a key prefix of its own on the shared cluster, and the slot map it read.
    private func sharedClusterStore(prefix: String) async throws -> (RedisClient, RedisStore, RedisCluster.SlotMap) {
        let client = try await makeRedisClient(url: try await ClusterSet.shared().url)
        let store = RedisStore(client: client, keyPrefix: "\(prefix)-\(UUID().uuidString.prefix(6))")
        _ = try await client.keyHolders()
        return (client, store, try #require(client.primary.cluster?.current.map))
    }

    /// CRC16 (XMODEM) as Redis Cluster computes it, with hash tags.
    @Test func hashSlotsMatchRedis() {
        #expect(HashSlot.of("123456789") == 0x31C3)
        #expect(HashSlot.of("foo") == 12182)
        #expect(HashSlot.of("{user1000}.following") == HashSlot.of("{user1000}.followers"))
        #expect(HashSlot.of("sluice:{p:acme}:state") == HashSlot.of("p:acme"))
        // An empty tag `{}` is no tag: the whole key counts.
        #expect(HashSlot.of("a{}b") == HashSlot.of("a{}b") && HashSlot.of("{}x") != HashSlot.of(""))
    }

    /// Redirect replies, including Redis 7's host-less form (`:port` = the same host).
    @Test func redirectsAreParsed() {
        let here = RedisURL.Endpoint(host: "10.0.0.1", port: 7000)
        #expect(ClusterRedirect("MOVED 3999 127.0.0.1:6381", current: here) == .moved(slot: 3999, to: .init(host: "127.0.0.1", port: 6381)))
        #expect(ClusterRedirect("ASK 12 :7002", current: here) == .ask(slot: 12, to: .init(host: "10.0.0.1", port: 7002)))
        #expect(ClusterRedirect("TRYAGAIN Multiple keys request during rehashing of slot", current: here) == .tryAgain)
        #expect(ClusterRedirect("CLUSTERDOWN The cluster is down", current: here) == .tryAgain)
        #expect(ClusterRedirect("ERR unknown command", current: here) == nil)
        #expect(ClusterRedirect("MOVED x 127.0.0.1:1", current: here) == nil)
    }

    /// `CLUSTER SLOTS` (Redis < 7) gives the same map as `CLUSTER SHARDS`.
    @Test func slotsReplyOfOlderRedisIsRead() throws {
        func node(_ port: Int) -> RedisReply { .array([.string(Array("127.0.0.1".utf8)), .integer(Int64(port)), .string(Array("id".utf8))]) }
        let reply = RedisReply.array([
            .array([.integer(0), .integer(8191), node(7000), node(7003)]),
            .array([.integer(8192), .integer(16383), node(7001), node(7004)]),
        ])
        let map = try RedisCluster.slotMap(slots: reply)
        #expect(map.primaries.map(\.port) == [7000, 7001] && map.replicas == 2 && map.coversEverySlot)
        #expect(map.primary(of: 0) == 0 && map.primary(of: 8192) == 1)
        #expect(throws: RedisError.self) { try RedisCluster.slotMap(slots: .array([.array([.integer(5), .integer(99_999), node(1)])])) }
    }

    /// The shared cluster's map covers every slot over three primaries with a replica each.
    @Test func slotMapComesFromClusterShards() async throws {
        let cluster = try await ClusterSet.shared()
        let client = try await makeRedisClient(url: cluster.url)
        defer { Task { await client.shutdown() } }
        let holders = try await client.keyHolders()
        let map = try #require(client.primary.cluster?.current.map)
        #expect(holders.count == 3 && map.coversEverySlot && map.replicas == 3)
        let primaries = Set(await cluster.primaries().map(\.port))
        #expect(Set(holders.compactMap { $0?.port }) == primaries)
    }

    /// A seed that is a Redis before 7 (no `CLUSTER SHARDS`): the client asks it for
    /// `CLUSTER SLOTS` instead, reads the same map and serves the cluster with it.
    @Test func aSeedWithoutClusterShardsIsAskedForClusterSlots() async throws {
        let cluster = try await ClusterSet.shared()
        let slots = try await RedisConnection.oneShot(
            ["CLUSTER", "SLOTS"], at: RedisURL.Endpoint(host: "127.0.0.1", port: cluster.servers[0].port), tls: nil, auth: nil, timeout: .seconds(5),
            on: MultiThreadedEventLoopGroup.singleton.next()
        ).get()
        let seed = try await FakeRedisNode.start(answering: [
            ["CLUSTER", "SHARDS"]: .error("ERR unknown subcommand 'SHARDS'. Try CLUSTER HELP."), ["CLUSTER", "SLOTS"]: slots,
        ])
        let client = try await makeRedisClient(url: "redis+cluster://127.0.0.1:\(seed.port)")
        defer { Task { await client.shutdown(); try await seed.stop() } }
        let holders = try await client.keyHolders()
        #expect(seed.commands.prefix(2) == [["CLUSTER", "SHARDS"], ["CLUSTER", "SLOTS"]])
        let map = try #require(client.primary.cluster?.current.map)
        #expect(holders.count == 3 && map.coversEverySlot)
        #expect(Set(holders.compactMap { $0?.port }) == Set(await cluster.primaries().map(\.port)))
        // The map of the node's own `CLUSTER SLOTS` (which, unlike `CLUSTER SHARDS`, leaves out
        // replicas that have not synced yet).
        let direct = try RedisCluster.slotMap(slots: slots)
        #expect(map.sameAssignment(as: direct) && map.replicas == direct.replicas)
        let key = "older-seed-\(UUID().uuidString)"
        for (index, name) in [key, "{x}" + key, "{y}" + key].enumerated() {
            _ = try await client.send(["SET", name, String(index), "PX", "60000"])
            #expect(try await client.send(["GET", name]) == .string(Array(String(index).utf8)))
        }
    }

    /// Admission, idempotency, tasks (queues, census, dead letters), usage and the cache each
    /// put keys on more than one primary: no feature sits in one slot.
    @Test func keysOfEveryFeatureSpreadOverThePrimaries() async throws {
        let (client, store, map) = try await sharedClusterStore(prefix: "spread")
        defer { Task { await client.shutdown() } }
        func nodes(_ keys: [String]) -> Int { Set(keys.compactMap { map.primary(of: HashSlot.of($0)) }).count }
        let partners = (0..<24).map { "partner-\($0)" }
        #expect(nodes(partners.map { store.keys($0).state }) == 3, "admission")
        #expect(nodes(partners.map { store.idempotencyKey($0, "k") }) == 3, "idempotency")
        #expect(nodes((0..<store.taskShards).map(store.queueKey)) == 3, "task queues")
        #expect(nodes((0..<store.taskShards).map(store.deadKey)) == 3, "dead letters")
        #expect(nodes((0..<store.taskShards).map { store.statusKeys($0)[0] }) == 3, "census")
        // Written for real: usage of 24 partners lands on every primary.
        let day = UsageDay(epochMilliseconds: Int64(Date().timeIntervalSince1970 * 1_000))
        var counts = UsageCounts()
        counts.count(UsageEvent(status: 200, bytesIn: 1, bytesOut: 1, microseconds: 100))
        var batch: UsageBatch = [:]
        for partner in partners { batch[UsageKey(day: day, partner: partner, version: "v2", route: "r")] = counts }
        try await store.addUsage(batch, batchID: "b1", retention: .seconds(86_400 * 2))
        var holding = 0
        for node in try await client.keyHolders() {
            guard case .array(let page) = try await client.send(["SCAN", "0", "MATCH", "\(store.keyPrefix):{u:*", "COUNT", "10000"], at: node), page.count == 2,
                case .array(let keys) = page[1]
            else { continue }
            if !keys.isEmpty { holding += 1 }
        }
        #expect(holding == 3, "usage keys on every primary")
        #expect(try await store.usage(from: day, to: day, partner: nil).count == partners.count)
    }

    /// A slot being migrated: a key already moved answers `ASK` and is written on the importing
    /// node (after `ASKING`) without changing the map; once the slot is moved, the old node
    /// answers `MOVED`, the map is read again and later commands go straight to the new primary.
    @Test func askAndMovedAreFollowed() async throws {
        let cluster = try await ClusterSet.start()
        let redirects = Mutex<[String]>([])
        let url = try RedisURL.parse(cluster.url).get()
        let primary = RedisPrimary(url: url, tls: nil, onRedirect: { kind in redirects.withLock { $0.append(kind) } })
        let client = try RedisClient(url: url, timeout: .seconds(2), group: MultiThreadedEventLoopGroup.singleton, primary: primary)
        defer { Task { await client.shutdown() } }
        let key = "{ask-test}:counter"
        let slot = HashSlot.of(key)
        _ = try await client.send(["SET", "{ask-test}:other", "1"])
        let source = try #require(await cluster.primaryPort(ofSlot: slot))
        let target = try #require(await cluster.primaries().map(\.port).first { $0 != source })
        let (sourceID, targetID) = (await cluster.nodeID(port: source), await cluster.nodeID(port: target))
        #expect(await cluster.cli(target, ["CLUSTER", "SETSLOT", String(slot), "IMPORTING", sourceID]).contains("OK"))
        #expect(await cluster.cli(source, ["CLUSTER", "SETSLOT", String(slot), "MIGRATING", targetID]).contains("OK"))
        // `key` does not exist on the source: the source answers ASK.
        #expect(try await client.send(["SET", key, "7"]) == .status("OK"))
        #expect(redirects.withLock { $0 } == ["ask"])
        #expect(await cluster.cli(target, ["CLUSTER", "COUNTKEYSINSLOT", String(slot)]).trimmingCharacters(in: .whitespacesAndNewlines) == "1")
        // Finish the move: the remaining key goes over, and the slot belongs to the target.
        _ = await cluster.cli(source, ["MIGRATE", "127.0.0.1", String(target), "", "0", "5000", "KEYS", "{ask-test}:other"])
        for port in cluster.servers.map(\.port) { _ = await cluster.cli(port, ["CLUSTER", "SETSLOT", String(slot), "NODE", targetID]) }
        #expect(try await client.send(["GET", key]) == .string(Array("7".utf8)))
        #expect(redirects.withLock { $0 } == ["ask", "moved"])
        try await eventually("the client's map names the new primary") {
            client.primary.cluster?.current.map.flatMap { map in map.primary(of: slot).map { map.primaries[$0].port } } == target
        }
        #expect(try await client.send(["GET", "{ask-test}:other"]) == .string(Array("1".utf8)))
        #expect(redirects.withLock { $0 }.count == 2, "no redirect once the map is read again")
    }

    /// A killed primary's replica takes over; the client follows without a restart (the calls
    /// during the gap fail fast, after it they succeed on the promoted replica).
    @Test func aKilledPrimaryIsFollowedToItsReplica() async throws {
        let cluster = try await ClusterSet.start()
        let client = try await makeRedisClient(url: cluster.url, timeout: .milliseconds(500))
        defer { Task { await client.shutdown() } }
        let key = "{failover}:k"
        _ = try await client.send(["SET", key, "before"])
        let victim = try #require(await cluster.primaryPort(ofSlot: HashSlot.of(key)))
        try await cluster.server(on: victim)?.stop()
        try await eventually(timeout: .seconds(30), "writes to the slot succeed on the promoted replica") {
            (try? await client.send(["SET", key, "after"])) == .status("OK")
        }
        // The node asked may learn of the promotion by gossip a moment after the client did.
        var promoted: Int?
        try await eventually("a node names the slot's new primary") {
            promoted = await cluster.primaryPort(ofSlot: HashSlot.of(key))
            return promoted != nil
        }
        #expect(promoted != victim)
        #expect(try await client.send(["GET", key]) == .string(Array("after".utf8)))
    }

    /// Task and webhook polls ask each primary once which of its shards have work (one call
    /// over the shards it serves, not one per shard), and still find work in every shard.
    @Test func shardChecksMakeOneCallPerPrimary() async throws {
        let cluster = try await ClusterSet.shared()
        let calls = Atomic<Int>(0)
        let client = try RedisStore.makeClient(
            url: try RedisURL.parse(cluster.url).get(), tlsCA: nil, timeout: .seconds(2), group: MultiThreadedEventLoopGroup.singleton,
            onCommand: { calls.add(1, ordering: .relaxed) }
        )
        defer { Task { await client.shutdown() } }
        let store = RedisStore(client: client, keyPrefix: "checks-\(UUID().uuidString.prefix(6))")
        // With the slot map read, the first polls load the per-primary scripts on each node
        // (before the map is known a poll asks shard by shard and loads nothing new).
        _ = try await client.keyHolders()
        _ = try await store.takeTasks(consumer: "w", limit: 8, lease: .seconds(30))
        _ = try await store.takeDueWebhooks(limit: 8, lease: .seconds(30))
        for poll in ["tasks", "webhooks"] {
            let before = calls.load(ordering: .relaxed)
            let taken = poll == "tasks"
                ? try await store.takeTasks(consumer: "w", limit: 8, lease: .seconds(30)).count
                : try await store.takeDueWebhooks(limit: 8, lease: .seconds(30)).count
            #expect(taken == 0)
            #expect(calls.load(ordering: .relaxed) - before == 3, "an idle \(poll) poll: one check per primary, nothing to take")
        }
    }

    /// The per-primary check reads keys of other slots of its node, and counts a key the node
    /// does not serve (its slot moved) as having work, so that the take goes and finds out.
    @Test func aShardCheckCountsAKeyOfAnotherNodeAsWork() async throws {
        let (client, store, map) = try await sharedClusterStore(prefix: "foreign")
        defer { Task { await client.shutdown() } }
        let dueKeys = (0..<store.taskShards).map(store.dueKey)
        let owners = dueKeys.map { map.primary(of: HashSlot.of($0)) }
        let here = try #require(owners.indices.first { owners[$0] == owners[0] && $0 != 0 })
        let elsewhere = try #require(owners.indices.first { owners[$0] != owners[0] })
        _ = try await client.send(["ZADD", dueKeys[0], "0", "message"])
        let reply = try await client.evaluate(
            TaskScripts.dueSetsWithWork.onNode, keys: [dueKeys[0]], arguments: ["", dueKeys[here], dueKeys[elsewhere]],
            durable: false, on: client.defaultEventLoop
        ).get()
        #expect(reply == .array([.integer(1), .integer(3)]), "due here; empty on the same node; not served by this node")
    }

    /// No seed answers: calls fail as unavailable (nothing sent), within their deadline.
    @Test func noSeedAnsweringFailsFast() async throws {
        let client = try await makeRedisClient(url: "redis+cluster://127.0.0.1:\(try freePort()),127.0.0.1:\(try freePort())", timeout: .milliseconds(200))
        defer { Task { await client.shutdown() } }
        let started = ContinuousClock.now
        await #expect(throws: RedisError.self) { try await client.send(["GET", "x"]) }
        #expect(ContinuousClock.now - started < .seconds(5))
    }
}

/// `tasks.shards` is recorded in the store; another count, or tasks of the 16-shard layout in an
/// unmarked store, is reported (the gateway logs it as an error).
@Suite struct TaskLayoutTests {
    @Test func aChangedShardCountIsReported() async throws {
        let client = try await makeRedisClient()
        defer { Task { await client.shutdown() } }
        let prefix = "layout-\(UUID().uuidString.prefix(8))"
        #expect(try await RedisStore(client: client, keyPrefix: prefix, taskShards: 64).checkTaskLayout() == .matches)
        #expect(try await RedisStore(client: client, keyPrefix: prefix, taskShards: 64).checkTaskLayout() == .matches)
        #expect(try await RedisStore(client: client, keyPrefix: prefix, taskShards: 16).checkTaskLayout() == .otherShardCount(64))
    }

    @Test func tasksOfTheSixteenShardLayoutAreReported() async throws {
        let client = try await makeRedisClient()
        defer { Task { await client.shutdown() } }
        let prefix = "layout-\(UUID().uuidString.prefix(8))"
        let old = RedisStore(client: client, keyPrefix: prefix, taskShards: 16)
        _ = try await client.send(["ZADD", old.indexKey(5), "1", "tsk_x"])
        #expect(try await RedisStore(client: client, keyPrefix: prefix, taskShards: 64).checkTaskLayout() == .legacy16)
        #expect(try await old.checkTaskLayout() == .matches, "the old count itself is fine, and marks the store")
        #expect(try await RedisStore(client: client, keyPrefix: prefix, taskShards: 64).checkTaskLayout() == .otherShardCount(16))
    }
}
