import Foundation
import Synchronization
import Testing
import TestSupport

/// A gateway on a Redis Sentinel set (SPEC §8): tasks accepted under a failover all finish,
/// `durability: replicated` never answers 202 for a write no replica has, and the admin API
/// and metrics show the change of primary. Each test has a Sentinel set of its own.
@Suite(.serialized)
struct SentinelGatewayTests {
    private static func configure(_ url: String, durability: String, receiverPort: Int? = nil) -> (inout TestPolicies) -> Void {
        { policies in
            TaskTests.addRoutes(&policies)
            policies.useRedis(url, onFailure: "local", timeout: "1s")
            policies.files["gateway.yaml"]! += "  durability: \(durability)\n  replica_timeout: 500ms\ntasks: { workers: 4, lease: 2s }\n"
            if let receiverPort { policies.addWebhook(url: "http://127.0.0.1:\(receiverPort)/hook") }
        }
    }

    /// kill -9 of the primary (which has two replicas) while partners keep sending tasks: during the gap accepts answer
    /// 503 + Retry-After, after it 202 again, and every task answered 202 — before, during and
    /// after — finishes and its signed webhook is delivered (`durability: replicated`: none is
    /// lost with the old primary). The admin API names the new primary; the change is counted
    /// and logged.
    @Test func everyAcceptedTaskFinishesAcrossAFailover() async throws {
        let sentinels = try await SentinelSet.start(replicas: 2)
        try await withWebhookReceiver { receiver, receiverPort in
            try await GatewayHarness.with(Self.configure(sentinels.url(), durability: "replicated", receiverPort: receiverPort)) { gateway in
                let load = AcceptLoad()
                try await load.acceptTasks(through: gateway) {
                    try await eventually("tasks are accepted") { load.accepted.withLock { $0.count } >= 20 }
                    try await sentinels.servers[0].stop()
                    let atKill = load.accepted.withLock { $0.count }
                    try await eventually(timeout: .seconds(30), "tasks are accepted on the new primary") { load.accepted.withLock { $0.count } >= atKill + 20 }
                }
                let ids = load.accepted.withLock { $0 }
                for id in ids {
                    let document = try await gateway.finishedTask("/v2/tasks/\(id)", timeout: .seconds(20))
                    #expect(document["status"] as? String == "succeeded", "\(id): \(document)")
                }
                let store = try #require(try await gateway.send(.GET, gateway.admin + "/admin/policies", key: TestKeys.viewerToken).json()["store"] as? [String: Any])
                #expect(store["kind"] as? String == "sentinel" && store["durability"] as? String == "replicated")
                let promoted = try #require(await sentinels.primaryPort())
                #expect(promoted != sentinels.servers[0].port)
                #expect(store["primary"] as? String == "127.0.0.1:\(promoted)")
                #expect((store["last_change"] as? [String: Any])?["new"] as? String == "127.0.0.1:\(promoted)")
                // One line per change of primary, the first from the killed one (a loaded machine can
                // make the sentinels fail over twice: then there are two).
                let changes = try gateway.logLines().filter { $0["message"] as? String == "the Redis primary changed" }
                #expect((1...2).contains(changes.count), "\(changes)")
                #expect(changes.first?["old"] as? String == "127.0.0.1:\(sentinels.servers[0].port)", "\(changes)")
                let counted = try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text
                    .split(separator: "\n").filter { $0.hasPrefix("sluice_store_topology_changes_total{") }
                #expect(!counted.isEmpty)
                try await eventually(timeout: .seconds(20), "every task's webhook is delivered") {
                    Set(receiver.deliveries.map(\.id)).isSuperset(of: ids.map { "msg_" + $0.dropFirst(4) })
                }
                #expect(receiver.deliveries.allSatisfy { $0.verified })
                print("sentinel failover: \(ids.count) tasks accepted, \(load.refused.load(ordering: .relaxed)) accepts refused during the gap, all finished and delivered")
            }
        }
    }

    /// Two gateways share one bucket on Sentinel; after kill -9 of the primary (the gap served by
    /// the local fallback) they share it again on the new primary, without a restart.
    @Test func sharedLimitsApplyAgainAfterAFailover() async throws {
        let sentinels = try await SentinelSet.start()
        let configure: (inout TestPolicies) -> Void = { policies in
            policies.setPlan("{ rate: { per_second: 0.01, burst: 50 } }")
            policies.useRedis(sentinels.url(), onFailure: "local", instances: 2, timeout: "1s")
        }
        func remaining(_ gateway: GatewayHarness) async throws -> Int? {
            let header = try await gateway.partner(.GET, "/v2/orders/1").header("RateLimit") ?? ""
            return header.split(separator: ";").first { $0.hasPrefix("r=") }.flatMap { Int($0.dropFirst(2)) }
        }
        try await GatewayHarness.with(configure) { first in
            try await GatewayHarness.with(configure) { second in
                let before = try #require(try await remaining(first))
                #expect(try await remaining(second) == before - 1, "one bucket for both")
                try await sentinels.servers[0].stop()
                // During the gap each gateway has its local share (50 / 2); the shared bucket on
                // the new primary (what the replica had, or a fresh one) holds more than that.
                // A gateway is asked only until it answers from the shared bucket: one that is
                // back first must not empty it while the other still waits out its fallback.
                var back = [false, false]
                try await eventually(timeout: .seconds(30), "both gateways use the shared bucket on the new primary") {
                    for (index, gateway) in [first, second].enumerated() where !back[index] {
                        back[index] = try await remaining(gateway) ?? 0 > 25
                    }
                    return back == [true, true]
                }
                let after = try #require(try await remaining(first))
                let next = try await remaining(second)
                #expect(after > 25 && next == after - 1, "one bucket for both again: \(after) then \(String(describing: next))")
            }
        }
    }

    /// A master name the sentinels do not know: logged, `/readyz` degraded, partners served by
    /// the fallback.
    @Test func anUnknownMasterNameIsDegradedNotDown() async throws {
        let url = try await SentinelSet.shared().url().replacingOccurrences(of: "/\(SentinelSet.masterName)/", with: "/nobody/")
        try await GatewayHarness.with(Self.configure(url, durability: "primary")) { gateway in
            let ready = try await gateway.send(.GET, gateway.admin + "/readyz", key: nil)
            #expect(ready.status == 200 && ready.text == #"{"status":"ready","degraded":true}"#)
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
            let lines = try gateway.logLines().filter { $0["message"] as? String == "cannot find the Redis primary" }
            #expect(lines.contains { ($0["error"] as? String)?.contains("does not know the master 'nobody'") == true }, "\(lines)")
        }
    }

    /// `durability: replicated` with the replica frozen: the accept is applied on the primary
    /// but no replica confirms it, so the partner gets 503 + Retry-After, not 202; once the
    /// replica runs again, accepts answer 202.
    @Test func noReplicaInTimeMeans503NotAccepted() async throws {
        let sentinels = try await SentinelSet.start()
        try await GatewayHarness.with(Self.configure(sentinels.url(), durability: "replicated")) { gateway in
            #expect(try await gateway.acceptTask("/v2/price-calculations?ms=1").status == 202)
            sentinels.servers[1].pause()
            let refused = try await gateway.acceptTask("/v2/price-calculations?ms=1")
            sentinels.servers[1].resume()
            #expect(refused.status == 503 && refused.header("Retry-After") != nil, "\(refused.status)")
            try await eventually("accepts answer 202 again") { try await gateway.acceptTask("/v2/price-calculations?ms=1").status == 202 }
        }
    }

    /// Sentinels all unreachable at start: the gateway starts in its fallback (`/readyz` 200 and
    /// degraded, partners served by local limits) and connects once they answer.
    @Test func startsInTheFallbackUntilTheSentinelsAnswer() async throws {
        let sentinels = try await SentinelSet.start()
        try await sentinels.stopSentinels()
        try await GatewayHarness.with(Self.configure(sentinels.url(), durability: "primary")) { gateway in
            let ready = try await gateway.send(.GET, gateway.admin + "/readyz", key: nil)
            #expect(ready.status == 200 && ready.text == #"{"status":"ready","degraded":true}"#)
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
            let store = try #require(try await gateway.send(.GET, gateway.admin + "/admin/policies", key: TestKeys.viewerToken).json()["store"] as? [String: Any])
            #expect(store["kind"] as? String == "sentinel" && store["primary"] is NSNull)
            try await sentinels.restartSentinels()
            try await eventually(timeout: .seconds(20), "the gateway finds the primary") {
                try await gateway.send(.GET, gateway.admin + "/readyz", key: nil).text == #"{"status":"ready"}"#
            }
            #expect(try await gateway.acceptTask("/v2/price-calculations?ms=1").status == 202)
        }
    }

    /// `durability: replicated` on a Redis without replicas: allowed, warned at start, shown as
    /// `sluice_store_replicas 0`.
    @Test func replicatedWithoutReplicasIsWarned() async throws {
        let redis = try await RedisServer.start()
        try await GatewayHarness.with(Self.configure(redis.url, durability: "replicated")) { gateway in
            try await eventually("the replicas are counted") { try await gateway.metric("sluice_store_replicas") == 0 }
            let warnings = try gateway.logLines().filter { ($0["message"] as? String)?.hasPrefix("store.durability is replicated but") == true }
            #expect(warnings.count == 1)
        }
    }
}
