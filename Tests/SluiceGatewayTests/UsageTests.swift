import AsyncHTTPClient
import Foundation
import NIOCore
import NIOPosix
import SluiceCore
@testable import SluiceGateway
@testable import SluiceStore
import Testing
import TestSupport

/// Usage counting and reports (SPEC §6, issue 13) through real gateways, real Redis and the real CLI.
@Suite(.serialized)
struct UsageTests {
    /// Six tokens for the whole test (one more every 100 s), so the seventh request is a 429.
    private static func configure(_ url: String) -> (inout TestPolicies) -> Void {
        { policies in
            policies.useRedis(url, timeout: "2s")
            policies.setPlan("{ rate: { per_second: 0.01, burst: 6 } }")
        }
    }

    /// The gateways' usage day comes from this clock (it stands still), so a run across midnight
    /// cannot split the counts over two days.
    private let clock = ManualClock(.present)
    private var today: String { UsageDay(epochMilliseconds: clock.now).text }

    private static func post(_ gateway: GatewayHarness, key: String) async throws -> TestResponse {
        try await gateway.partner(.POST, "/v2/orders", headers: [("Idempotency-Key", key)], body: .bytes(ByteBuffer(string: "{\"part\":\"A-1\"}")))
    }

    /// Traffic on two instances sharing Redis — 200s, a 404, a 5xx, a replay, a 429, another
    /// partner, an unauthenticated request — shows up in `sluice report` and `GET /admin/usage`
    /// row for row.
    @Test func reportRowsEqualTrafficOnTwoInstances() async throws {
        let url = try await TaskDatabase.url()
        try await GatewayHarness.with(Self.configure(url), clock: clock) { first in
            try await GatewayHarness.with(Self.configure(url), clock: clock) { second in
                #expect(try await first.partner(.GET, "/v2/orders/1").status == 200)
                #expect(try await Self.post(first, key: "order-1").status == 200)
                #expect(try await first.partner(.GET, "/v2/no-such-thing").status == 404)
                #expect(try await first.partner(.GET, "/v2/orders/1", key: "sk_test_nobody").status == 401)
                #expect(try await first.partner(.GET, "/v2/orders/9", key: TestKeys.globex).status == 200)
                let replay = try await Self.post(second, key: "order-1")
                #expect(replay.status == 200 && replay.header("Idempotent-Replayed") == "true")
                #expect(try await second.partner(.GET, "/v2/status/503").status == 503)
                #expect(try await second.partner(.GET, "/v2/orders/2").status == 200)
                #expect(try await second.partner(.GET, "/v2/orders/3", client: second.http2).status == 200)
                try expectProblem(try await second.partner(.GET, "/v2/orders/4"), 429, "rate-limited", path: "/v2/orders/4")

                let query = "from=\(today)&to=\(today)"
                var rows: [[String: Any]] = []
                try await eventually("every request is in the store") {
                    let response = try await first.send(.GET, first.admin + "/admin/usage?" + query, key: TestKeys.viewerToken)
                    rows = (try? JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as? [[String: Any]]) ?? []
                    return rows.reduce(0) { $0 + (($1["requests"] as? Int) ?? 0) } == 9
                }
                let byRoute = Dictionary(rows.map { ("\($0["partner"]!)/\($0["version"]!)/\($0["route"]!)", $0) }, uniquingKeysWith: { a, _ in a })
                #expect(Set(byRoute.keys) == ["acme/v2/get-order", "acme/v2/create-order", "acme/v2/-", "acme/v2/status", "globex/v2/get-order"])
                func counts(_ key: String, _ names: [String]) -> [Int] { names.map { byRoute[key]?[$0] as? Int ?? -1 } }
                let names = ["requests", "2xx", "4xx", "5xx", "rate_limited", "quota_rejected", "concurrency_limited", "replayed", "tasks"]
                #expect(counts("acme/v2/get-order", names) == [4, 3, 1, 0, 1, 0, 0, 0, 0])
                #expect(counts("acme/v2/create-order", names) == [2, 2, 0, 0, 0, 0, 0, 1, 0])
                #expect(counts("acme/v2/-", names) == [1, 0, 1, 0, 0, 0, 0, 0, 0])
                #expect(counts("acme/v2/status", names) == [1, 0, 0, 1, 0, 0, 0, 0, 0])
                #expect(counts("globex/v2/get-order", names) == [1, 1, 0, 0, 0, 0, 0, 0, 0])
                #expect(byRoute["acme/v2/create-order"]?["bytes_in"] as? Int == 28)
                #expect((byRoute["acme/v2/create-order"]?["bytes_out"] as? Int ?? 0) > 0)
                #expect(rows.allSatisfy { $0["date"] as? String == today && ($0["p95_ms"] as? Double ?? 0) > 0 && ($0["bytes_out"] as? Int ?? 0) > 0 })

                // The CLI reads the same rows from Redis.
                let policies = ["--policies", first.policies.directory.path]
                let csv = try await SluiceProcess.run(["report", "--from", today, "--to", today] + policies)
                #expect(csv.code == 0, "\(csv.stderr)")
                let lines = csv.stdout.components(separatedBy: "\r\n")
                #expect(lines.first == UsageReport.columns.joined(separator: ","))
                #expect(lines.count == 7 && lines.last == "")
                #expect(lines.contains { $0.hasPrefix("\(today),acme,v2,get-order,4,3,1,0,1,0,0,0,0,0,") })
                #expect(lines.contains { $0.hasPrefix("\(today),acme,v2,create-order,2,2,0,0,0,0,0,1,0,0,28,") })
                let globex = try await SluiceProcess.run(["report", "--from", today, "--to", today, "--partner", "globex", "--format", "json"] + policies)
                let globexRows = try JSONSerialization.jsonObject(with: Data(globex.stdout.utf8)) as? [[String: Any]]
                #expect(globexRows?.map { $0["route"] as? String } == ["get-order"])
                let admin = try await first.send(.GET, first.admin + "/admin/usage?" + query + "&partner=acme", key: TestKeys.viewerToken)
                #expect(admin.status == 200 && admin.header("Content-Type") == "application/json")
                #expect((try JSONSerialization.jsonObject(with: Data(admin.body.readableBytesView)) as? [[String: Any]])?.count == 4)
            }
        }
    }

    /// Counts not yet flushed when the gateway stops are written at shutdown.
    @Test func lastCountsAreFlushedAtShutdown() async throws {
        let url = try await TaskDatabase.url()
        try await GatewayHarness.with({ $0.useRedis(url, timeout: "2s") }, clock: clock, usageFlushInterval: .seconds(3_600)) { (gateway: GatewayHarness) async throws in
            for id in 1...3 { #expect(try await gateway.partner(.GET, "/v2/orders/\(id)").status == 200) }
        }
        let client = try RedisClient(url: try RedisURL.parse(url).get(), timeout: .seconds(2), group: MultiThreadedEventLoopGroup.singleton)
        let day = UsageDay(epochMilliseconds: clock.now)
        let usage = try await RedisStore(client: client).usage(from: day, to: day, partner: "acme")
        await client.shutdown()
        #expect(usage[UsageKey(day: day, partner: "acme", version: "v2", route: "get-order")]?.requests == 3)
    }

    /// The admin endpoint needs a token and checks its query.
    @Test func adminUsageChecksTokenAndQuery() async throws {
        try await GatewayHarness.with(clock: clock) { gateway in
            #expect(try await gateway.send(.GET, gateway.admin + "/admin/usage?from=\(today)&to=\(today)", key: nil).status == 401)
            let cases: [(String, String)] = [
                ("to=\(today)", "from is required"),
                ("from=2026-02-30&to=\(today)", "from must be a UTC calendar date as YYYY-MM-DD from 1970-01-01 to 9999-12-31, got '2026-02-30'"),
                ("from=\(today)&to=2000-01-01", "is after to"),
                ("from=\(today)&to=\(today)&partner=%3Cscript%3E", "partner must be a partner id"),
            ]
            for (query, message) in cases {
                let response = try await gateway.send(.GET, gateway.admin + "/admin/usage?" + query, key: TestKeys.viewerToken)
                #expect(response.status == 400, "\(query)")
                #expect((try response.json()["detail"] as? String)?.contains(message) == true, "\(query): \(response.text)")
            }
            let unknown = try await gateway.send(.GET, gateway.admin + "/admin/usage?from=\(today)&to=\(today)&partner=initech", key: TestKeys.viewerToken)
            #expect(unknown.status == 404)
            #expect((try unknown.json()["detail"] as? String)?.contains("unknown partner 'initech'") == true)
            // The embedded store answers too (the CLI cannot reach it).
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
            try await eventually("the request is counted") {
                let response = try await gateway.send(.GET, gateway.admin + "/admin/usage?from=\(today)&to=\(today)", key: TestKeys.viewerToken)
                return response.text.contains("\"route\":\"get-order\"")
            }
        }
    }

    /// `sluice report`'s bad input exits 1 with a clear message; `--out` writes the file; html is one page.
    @Test func reportCommandChecksItsInput() async throws {
        let url = try await TaskDatabase.url()
        try await GatewayHarness.with({ $0.useRedis(url, timeout: "2s") }, clock: clock) { gateway in
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
            let policies = ["--policies", gateway.policies.directory.path]
            let cases: [([String], String)] = [
                (["--from", "2026-13-01", "--to", today], "--from must be a UTC calendar date as YYYY-MM-DD from 1970-01-01 to 9999-12-31, got '2026-13-01'"),
                (["--from", today, "--to", "tomorrow"], "--to must be a UTC calendar date"),
                (["--from", today, "--to", "2000-01-01"], "is after to"),
                (["--from", today, "--to", today, "--partner", "initech"], "unknown partner 'initech'"),
                (["--from", today, "--to", today, "--partner", "../etc"], "partner must be a partner id"),
                (["--from", today, "--to", today, "--format", "xml"], "format"),
            ]
            for (arguments, message) in cases {
                let result = try await SluiceProcess.run(["report"] + arguments + policies)
                #expect(result.code == 1, "\(arguments)")
                #expect(result.stderr.contains(message), "\(arguments): \(result.stderr)")
            }
            let out = gateway.policies.directory.deletingLastPathComponent().appendingPathComponent("usage.html")
            try await eventually("the request is counted") {
                let result = try await SluiceProcess.run(["report", "--from", today, "--to", today, "--format", "html", "--out", out.path] + policies)
                #expect(result.code == 0 && result.stdout.isEmpty, "\(result.stderr)")
                return (try? String(contentsOf: out, encoding: .utf8))?.contains("<h2>acme</h2>") == true
            }
            let html = try String(contentsOf: out, encoding: .utf8)
            #expect(html.hasPrefix("<!DOCTYPE html>") && html.contains("<svg") && !html.contains("<script"))
        }
        // The embedded store lives in the gateway: the CLI says where to look instead.
        try await GatewayHarness.with { gateway in
            let result = try await SluiceProcess.run(["report", "--from", today, "--to", today, "--policies", gateway.policies.directory.path])
            #expect(result.code == 1 && result.stderr.contains("GET /admin/usage"))
        }
    }
}

/// A flush that fails is kept and retried under the same batch id, and newer counts wait beside it.
struct UsageBacklogTests {
    /// A store whose first `failures` writes fail after (or before) applying the batch.
    final class FlakyStore: UsageStore, @unchecked Sendable {
        let inner = MemoryStore()
        var failures: Int
        let applyBeforeFailing: Bool
        var ids: [String] = []

        init(failures: Int, applyBeforeFailing: Bool) {
            self.failures = failures
            self.applyBeforeFailing = applyBeforeFailing
        }

        func addUsage(_ batch: UsageBatch, batchID: String, retention: Duration) async throws {
            ids.append(batchID)
            if failures > 0 {
                failures -= 1
                if applyBeforeFailing { try await inner.addUsage(batch, batchID: batchID, retention: retention) }
                throw RedisError.unavailable("test: store down")
            }
            try await inner.addUsage(batch, batchID: batchID, retention: retention)
        }

        func usage(from: UsageDay, to: UsageDay, partner: String?) async throws -> UsageBatch {
            try await inner.usage(from: from, to: to, partner: partner)
        }
    }

    @Test(arguments: [false, true])
    func failedFlushIsRetriedOnceUnderItsID(applyBeforeFailing: Bool) async throws {
        let day = UsageDay(epochMilliseconds: MemoryStore.wallClock())
        let key = UsageKey(day: day, partner: "acme", version: "v2", route: "orders")
        func batch(_ requests: Int) -> UsageBatch {
            var counts = UsageCounts()
            for _ in 0..<requests { counts.count(UsageEvent(status: 200, bytesIn: 0, bytesOut: 0, microseconds: 1_000)) }
            return [key: counts]
        }
        let store = FlakyStore(failures: 2, applyBeforeFailing: applyBeforeFailing)
        let counter = Counter()
        var backlog = UsageBacklog(newID: { "batch-\(counter.next())" })
        backlog.add(batch(3))
        #expect(await backlog.write(to: store, retention: .seconds(86_400)) != nil)
        backlog.add(batch(2))
        #expect(await backlog.write(to: store, retention: .seconds(86_400)) != nil)
        #expect(backlog.inDoubt?.id == "batch-1" && backlog.waiting[key]?.requests == 2)
        backlog.add(batch(1))
        #expect(await backlog.write(to: store, retention: .seconds(86_400)) == nil)
        #expect(backlog.isEmpty)
        #expect(store.ids == ["batch-1", "batch-1", "batch-1", "batch-2"])
        #expect(try await store.usage(from: day, to: day, partner: nil)[key]?.requests == 6)
    }

    final class Counter: @unchecked Sendable {
        private var value = 0
        func next() -> Int {
            value += 1
            return value
        }
    }
}
