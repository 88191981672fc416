import Foundation
import Synchronization
import Testing
import TestSupport

/// A gateway on a Redis Cluster (SPEC §8): limits shared by two gateways, tasks that all finish
/// across a primary killed under traffic, a live reshard followed without a failed request,
/// and the slot map in the admin API. Tests that kill nodes or move slots have a cluster of their own.
@Suite(.serialized)
struct ClusterGatewayTests {
    private static func configure(_ url: String, durability: String = "primary", receiverPort: Int? = nil) -> (inout TestPolicies) -> Void {
        { policies in
            TaskTests.addRoutes(&policies)
            policies.useRedis(url, onFailure: "local", timeout: "1s")
            policies.files["gateway.yaml"]! += "  durability: \(durability)\n  replica_timeout: 500ms\ntasks: { workers: 4, lease: 2s }\n"
            if let receiverPort { policies.addWebhook(url: "http://127.0.0.1:\(receiverPort)/hook") }
        }
    }

    private static func remaining(_ gateway: GatewayHarness, key: String = TestKeys.acme) async throws -> Int? {
        let header = try await gateway.partner(.GET, "/v2/orders/1", key: key).header("RateLimit") ?? ""
        return header.split(separator: ";").first { $0.hasPrefix("r=") }.flatMap { Int($0.dropFirst(2)) }
    }

    private static func metric(_ gateway: GatewayHarness, _ prefix: String) async throws -> Double {
        try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text.split(separator: "\n")
            .filter { $0.hasPrefix(prefix) }.compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0, +)
    }

    /// Two gateways on the shared cluster take from one bucket exactly, as on one Redis; the
    /// admin API shows the slot map (every slot, three primaries with a replica each).
    @Test func twoGatewaysShareOneBucket() async throws {
        let cluster = try await ClusterSet.shared()
        let configure: (inout TestPolicies) -> Void = { policies in
            policies.setPlan("{ rate: { per_second: 0.01, burst: 50 } }")
            policies.useRedis(cluster.url, onFailure: "deny", instances: 2, timeout: "1s")
        }
        try await GatewayHarness.with(configure) { first in
            try await GatewayHarness.with(configure) { second in
                let before = try #require(try await Self.remaining(first))
                for step in 1...5 {
                    #expect(try await Self.remaining(step % 2 == 0 ? first : second) == before - step, "one bucket for both")
                }
                let store = try #require(try await first.send(.GET, first.admin + "/admin/policies", key: TestKeys.viewerToken).json()["store"] as? [String: Any])
                #expect(store["kind"] as? String == "cluster")
                #expect(Set(store.keys) == ["kind", "durability", "slots_covered", "primaries", "replicas", "nodes", "map_changed_at"])
                #expect(store["slots_covered"] as? Int == 16_384 && store["primaries"] as? Int == 3 && store["replicas"] as? Int == 3, "\(store)")
                #expect((store["nodes"] as? [String])?.count == 3)
                let ready = try await first.send(.GET, first.admin + "/readyz", key: nil)
                #expect(ready.status == 200 && ready.text == #"{"status":"ready"}"#)
            }
        }
    }

    /// kill -9 of a primary while partners keep sending tasks (`durability: replicated`): tasks
    /// of the other shards go on, the dead primary's replica takes over, and once the killed
    /// node is back (as a replica, so the promoted one has a replica to confirm writes) every
    /// task answered 202 finishes and its signed webhook is delivered.
    @Test func everyAcceptedTaskFinishesAcrossAPrimaryKill() async throws {
        let cluster = try await ClusterSet.start()
        try await withWebhookReceiver { receiver, receiverPort in
            try await GatewayHarness.with(Self.configure(cluster.url, durability: "replicated", receiverPort: receiverPort)) { gateway in
                let load = AcceptLoad()
                let victim = try #require(await cluster.primaries().first?.port)
                try await load.acceptTasks(through: gateway) {
                    try await eventually("tasks are accepted") { load.accepted.withLock { $0.count } >= 20 }
                    try await cluster.server(on: victim)?.stop()
                    let atKill = load.accepted.withLock { $0.count }
                    try await eventually(timeout: .seconds(30), "the replica took over") {
                        let primaries = await cluster.primaries().map(\.port)
                        return primaries.count == 3 && !primaries.contains(victim)
                    }
                    try await cluster.server(on: victim)?.restart()
                    try await cluster.waitUntilHealthy()
                    try await eventually(timeout: .seconds(30), "tasks are accepted on every shard again") { load.accepted.withLock { $0.count } >= atKill + 40 }
                }
                let ids = load.accepted.withLock { $0 }
                for id in ids {
                    #expect(try await gateway.finishedTask("/v2/tasks/\(id)", timeout: .seconds(20))["status"] as? String == "succeeded", "\(id)")
                }
                try await eventually(timeout: .seconds(20), "every task's webhook is delivered") {
                    Set(receiver.deliveries.map(\.id)).isSuperset(of: ids.map { "msg_" + $0.dropFirst(4) })
                }
                #expect(receiver.deliveries.allSatisfy { $0.verified })
                #expect(try await Self.metric(gateway, "sluice_store_topology_changes_total{") >= 1)
                let changes = try gateway.logLines().filter { $0["message"] as? String == "the Redis Cluster slot map changed" }
                #expect(!changes.isEmpty)
                print("cluster failover: \(ids.count) tasks accepted, \(load.refused.load(ordering: .relaxed)) accepts refused during the gap, all finished and delivered")
            }
        }
    }

    /// `redis-cli --cluster reshard` moves every slot of the primary holding acme's keys to
    /// another while acme keeps sending: every request is answered 200, no store call fails
    /// (redirects are followed and counted), and the bucket carries on where it was.
    @Test func liveReshardIsFollowedWithoutAFailedRequest() async throws {
        let cluster = try await ClusterSet.start()
        let configure: (inout TestPolicies) -> Void = { policies in
            policies.setPlan("{ rate: { per_second: 0.01, burst: 100000 } }")
            policies.useRedis(cluster.url, onFailure: "deny", timeout: "1s")
        }
        try await GatewayHarness.with(configure) { gateway in
            let slot = Int(await cluster.cli(cluster.servers[0].port, ["CLUSTER", "KEYSLOT", "{p:acme}"]).trimmingCharacters(in: .whitespacesAndNewlines))
            let owner = try #require(await cluster.primaries().first { $0.slots.contains { $0.contains(slot ?? -1) } })
            let target = try #require(await cluster.primaries().first { $0.port != owner.port })
            let count = owner.slots.reduce(0) { $0 + $1.count }
            let before = try #require(try await Self.remaining(gateway))
            let load = AcceptLoad()
            try await withThrowingTaskGroup(of: Void.self) { senders in
                for _ in 0..<2 {
                    senders.addTask {
                        while load.sending.load(ordering: .relaxed) {
                            let status = try await gateway.partner(.GET, "/v2/orders/1").status
                            load.answered.add(1, ordering: .relaxed)
                            if status != 200 { load.unexpected.withLock { $0.append(status) } }
                        }
                    }
                }
                let (from, to) = (await cluster.nodeID(port: owner.port), await cluster.nodeID(port: target.port))
                let cli = try #require(ChildProcess.which("redis-cli"))
                let reshard = try ChildProcess(
                    executable: cli,
                    [
                        "--cluster", "reshard", "127.0.0.1:\(owner.port)", "--cluster-from", from, "--cluster-to", to, "--cluster-slots", String(count),
                        "--cluster-yes",
                    ]
                )
                #expect(try await reshard.exitCode(timeout: .seconds(120)) == 0, "\(reshard.standardError)")
                let atEnd = load.answered.load(ordering: .relaxed)
                try await eventually("requests go on after the move") { load.answered.load(ordering: .relaxed) >= atEnd + 20 }
                load.sending.store(false, ordering: .relaxed)
                try await senders.waitForAll()
            }
            #expect(await cluster.primaryPort(ofSlot: slot ?? -1) == target.port)
            #expect(load.unexpected.withLock { $0 }.isEmpty, "\(load.unexpected.withLock { $0 })")
            #expect(try await Self.metric(gateway, "sluice_store_errors_total") == 0)
            #expect(try await Self.metric(gateway, "sluice_store_redirects_total{kind=\"moved\"}") >= 1)
            let total = load.answered.load(ordering: .relaxed)
            let after = try #require(try await Self.remaining(gateway))
            #expect(after == before - total - 1, "the bucket moved with its slot: \(before) → \(after) after \(total) requests")
            print("cluster reshard: \(count) slots moved under \(total) requests, \(try await Self.metric(gateway, "sluice_store_redirects_total")) redirects followed")
        }
    }

    /// Slots no primary serves (taken away with `CLUSTER DELSLOTSRANGE` on every node): logged,
    /// `/readyz` degraded, partners served by the fallback.
    @Test func uncoveredSlotsAreDegradedNotDown() async throws {
        let cluster = try await ClusterSet.start()
        try await GatewayHarness.with(Self.configure(cluster.url)) { gateway in
            #expect(try await gateway.send(.GET, gateway.admin + "/readyz", key: nil).text == #"{"status":"ready"}"#)
            for server in cluster.servers { _ = await cluster.cli(server.port, ["CLUSTER", "DELSLOTSRANGE", "0", "99"]) }
            try await eventually("the uncovered slots are logged") {
                try gateway.logLines().contains { ($0["message"] as? String)?.contains("does not cover every slot") == true }
            }
            let ready = try await gateway.send(.GET, gateway.admin + "/readyz", key: nil)
            #expect(ready.status == 200 && ready.text == #"{"status":"ready","degraded":true}"#)
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
            let store = try #require(try await gateway.send(.GET, gateway.admin + "/admin/policies", key: TestKeys.viewerToken).json()["store"] as? [String: Any])
            #expect(store["slots_covered"] as? Int == 16_384 - 100, "\(store)")
        }
    }

    /// A store whose tasks were written with another `tasks.shards` is named in an error line
    /// at start (this instance would not find those tasks).
    @Test func aStoreOfAnotherShardCountIsLogged() async throws {
        let redis = try await RedisServer.start()
        _ = await SentinelSet.cli(port: redis.port, ["SET", "sluice:{t:layout}:shards", "16"])
        try await GatewayHarness.with(Self.configure(redis.url)) { gateway in
            try await eventually("the layout mismatch is logged") {
                try gateway.logLines().contains {
                    $0["level"] as? String == "error" && ($0["message"] as? String)?.hasPrefix("the store's tasks use tasks.shards: 16, this instance has 64") == true
                }
            }
        }
    }

    /// No seed answers: logged, `/readyz` degraded, partners served by the fallback.
    @Test func noSeedAnsweringIsDegradedNotDown() async throws {
        let url = "redis+cluster://127.0.0.1:\(try freePort()),127.0.0.1:\(try freePort())"
        try await GatewayHarness.with(Self.configure(url)) { gateway in
            let ready = try await gateway.send(.GET, gateway.admin + "/readyz", key: nil)
            #expect(ready.status == 200 && ready.text == #"{"status":"ready","degraded":true}"#)
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
            try await eventually("the unreadable slot map is logged") {
                try gateway.logLines().contains { $0["message"] as? String == "cannot read the Redis Cluster slot map" }
            }
        }
    }
}
