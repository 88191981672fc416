import Foundation
import Testing
import TestSupport
import Yams

/// The operations pack (SPEC §10) checked for real: `promtool` checks and unit-tests the rules,
/// and a real Prometheus scraping a real gateway — with traffic, a dead upstream whose breaker
/// opens, rate-limit refusals, a cached route and a task delivered by webhook — evaluates every
/// rule (all healthy) and every dashboard panel query (all parse; the panels return series).
@Suite(.serialized)
struct OpsPackTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let rulesPath = root.appendingPathComponent("ops/prometheus/sluice-rules.yaml").path
    static let ruleTestsPath = root.appendingPathComponent("ops/prometheus/tests").path
    static let dashboardPath = root.appendingPathComponent("ops/grafana/sluice-dashboard.json").path

    /// Panels this scenario cannot fill (no deduplicated task, no pool ejection):
    /// their queries must still parse.
    static let panelsAllowedEmpty: Set<String> = ["Deduplicated tasks", "Ejections and no-target answers"]

    struct ToolMissing: Error, CustomStringConvertible {
        let name: String
        var description: String { "\(name) is not installed: run ./scripts/test, which installs Debian's prometheus package" }
    }

    static func tool(_ name: String) throws -> String {
        guard let path = ChildProcess.which(name) else { throw ToolMissing(name: name) }
        return path
    }

    @Test func promtoolChecksAndTestsTheRules() async throws {
        let promtool = try Self.tool("promtool")
        let check = try ChildProcess(executable: promtool, ["check", "rules", Self.rulesPath])
        #expect(try await check.exitCode() == 0, "\(check.standardOutput)\(check.standardError)")
        let tests = try FileManager.default.contentsOfDirectory(atPath: Self.ruleTestsPath).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(!tests.isEmpty)
        let run = try ChildProcess(executable: promtool, ["test", "rules"] + tests.map { "\(Self.ruleTestsPath)/\($0)" })
        #expect(try await run.exitCode() == 0, "\(run.standardOutput)\(run.standardError)")
    }

    /// Every alert has `summary`, `description` and a `runbook` pointing at its README entry,
    /// which exists; the dashboard has the datasource, partner and route variables and every
    /// panel reads the chosen datasource.
    @Test func rulesHaveRunbooksAndTheDashboardItsVariables() throws {
        let readme = try String(contentsOf: Self.root.appendingPathComponent("README.md"), encoding: .utf8)
        let alerts = try Self.rules().filter { $0["alert"] != nil }
        #expect(alerts.count >= 11)
        for alert in alerts {
            let name = try #require(alert["alert"] as? String)
            let annotations = alert["annotations"] as? [String: String] ?? [:]
            #expect(annotations["summary"]?.isEmpty == false && annotations["description"]?.isEmpty == false, "\(name)")
            #expect(annotations["runbook"] == "README.md#\(name.lowercased())", "\(name)")
            #expect(readme.contains("\n#### \(name)\n"), "README has no runbook entry for \(name)")
        }
        let dashboard = try Self.dashboard()
        #expect((dashboard["schemaVersion"] as? Int ?? 0) >= 36)
        let variables = ((dashboard["templating"] as? [String: Any])?["list"] as? [[String: Any]]) ?? []
        #expect(variables.map { $0["name"] as? String } == ["datasource", "partner", "route"])
        #expect(variables.first?["type"] as? String == "datasource" && variables.first?["query"] as? String == "prometheus")
        for panel in Self.panels(dashboard) {
            #expect((panel["datasource"] as? [String: Any])?["uid"] as? String == "${datasource}", "\(panel["title"] ?? "")")
        }
    }

    @Test func everyRuleAndPanelWorksOnARealPrometheus() async throws {
        let prometheus = try Self.tool("prometheus")
        try await withWebhookReceiver { receiver, webhookPort in
            try await GatewayHarness.with({ policies in
                policies.files["plans.yaml"] = """
                    plans:
                      gold: { rate: { per_second: 1000, burst: 1000 }, quota: { requests: 100000, per: day } }
                      tiny: { rate: { per_second: 0.01, burst: 2 }, quota: { requests: 100, per: day } }

                    """
                policies.files["partners/globex.yaml"] = policies.files["partners/globex.yaml"]!.replacingOccurrences(of: "plan: gold", with: "plan: tiny")
                policies.upstreams["dead"] = "url: http://127.0.0.1:1\nconnect_timeout: 1s\ncircuit_breaker: { window: 10, min_calls: 4, failure_rate: 50%, open_for: 60s }"
                policies.addWebhook(url: "http://127.0.0.1:\(webhookPort)/hooks")
                policies.addRoutes(
                    "{ id: price, versions: [v2], method: POST, path: /price-calculations, upstream: main, upstream_path: /api/echo, async: always, slo: { p95: 10m } }",
                    "{ id: catalog, versions: [v2], method: GET, path: \"/catalog/{id}\", upstream: main, upstream_path: \"/api/echo/{id}\", cache: { ttl: 60s }, slo: { p95: 1s, p99: 2s } }"
                )
            }) { gateway in
                let server = try await PrometheusServer.start(executable: prometheus, scraping: gateway.admin, rules: Self.rulesPath)
                defer { server.stop() }
                try await server.waitForScrapes(1, gateway: gateway)

                for n in 0..<10 { #expect(try await gateway.partner(.GET, "/v2/orders/\(n)").status == 200) }
                for n in 0..<3 { _ = try await gateway.partner(.GET, "/v2/catalog/\(n % 2)") }
                for _ in 0..<6 { #expect(try await gateway.partner(.GET, "/v2/dead").status >= 500) }
                for _ in 0..<4 { _ = try await gateway.partner(.GET, "/v2/orders/1", key: TestKeys.globex) }
                #expect(try await gateway.acceptTask("/v2/price-calculations").status == 202)
                try await eventually("the task's webhook arrived") { receiver.deliveries.count >= 1 }
                try await server.waitForScrapes(3, gateway: gateway, until: "sluice_webhook_deliveries_total{result=\"delivered\"} >= 1")

                // Every rule parses, evaluates without error and is healthy in Prometheus.
                for rule in try Self.rules() {
                    let expr = try #require(rule["expr"] as? String)
                    _ = try await server.query(expr, gateway: gateway)
                }
                try await eventually("Prometheus evaluated every rule") { try await server.rulesHealthy(gateway: gateway) }

                // Every panel query parses; every panel but the allowed ones returns series.
                var empty: [String] = []
                for panel in Self.panels(try Self.dashboard()) {
                    let title = panel["title"] as? String ?? "?"
                    var series = 0
                    for target in panel["targets"] as? [[String: Any]] ?? [] {
                        let expr = try #require(target["expr"] as? String, "\(title)")
                        series += try await server.query(Self.substituted(expr), gateway: gateway).count
                    }
                    if series == 0 { empty.append(title) }
                }
                #expect(Set(empty).isSubset(of: Self.panelsAllowedEmpty), "panels without series: \(empty)")

                // The scenario reached the series the core alerts watch.
                #expect(try await server.query("max by (upstream) (sluice_breaker_state) == 1", gateway: gateway).contains { $0["upstream"] == "dead" })
                #expect(try await server.query("sluice_route_slo_seconds", gateway: gateway).count == 3)
                #expect(try await server.query("sluice_tls_certificate_expiry_timestamp_seconds", gateway: gateway).count == 2)
                #expect(try await server.query("sum by (partner) (sluice_ratelimit_rejections_total) > 0", gateway: gateway).contains { $0["partner"] == "globex" })
            }
        }
    }

    /// A panel query as Grafana sends it with every partner and route chosen.
    static func substituted(_ expr: String) -> String {
        expr.replacingOccurrences(of: "$__rate_interval", with: "1m").replacingOccurrences(of: "$route", with: ".*")
            .replacingOccurrences(of: "$partner", with: ".*")
    }

    static func rules() throws -> [[String: Any]] {
        let text = try String(contentsOfFile: rulesPath, encoding: .utf8)
        let groups = (try Yams.load(yaml: text) as? [String: Any])?["groups"] as? [[String: Any]] ?? []
        return groups.flatMap { $0["rules"] as? [[String: Any]] ?? [] }
    }

    static func dashboard() throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dashboardPath))) as? [String: Any] ?? [:]
    }

    /// The dashboard's panels, rows left out (their panels included).
    static func panels(_ dashboard: [String: Any]) -> [[String: Any]] {
        (dashboard["panels"] as? [[String: Any]] ?? []).flatMap { panel in
            panel["type"] as? String == "row" ? panel["panels"] as? [[String: Any]] ?? [] : [panel]
        }
    }
}

/// A Prometheus on a free loopback port scraping one gateway's admin listener every second
/// and evaluating `rules` every second, with its data in a temporary folder.
struct PrometheusServer {
    let process: ChildProcess
    let url: String

    static func start(executable: String, scraping admin: String, rules: String) async throws -> PrometheusServer {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-prometheus-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let target = admin.replacingOccurrences(of: "http://", with: "")
        let config = """
            global: { scrape_interval: 1s, evaluation_interval: 1s }
            rule_files: ["\(rules)"]
            scrape_configs:
              - job_name: sluice
                static_configs: [{ targets: ["\(target)"] }]

            """
        let configPath = directory.appendingPathComponent("prometheus.yml").path
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        let port = try freePort()
        let process = try ChildProcess(executable: executable, [
            "--config.file=\(configPath)", "--storage.tsdb.path=\(directory.appendingPathComponent("data").path)",
            "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
        ])
        return PrometheusServer(process: process, url: "http://127.0.0.1:\(port)")
    }

    func stop() {
        process.signal(SIGKILL)
    }

    /// Waits until Prometheus has scraped the gateway `count` more times (and, when given,
    /// until `condition` holds), so that rates over a minute have points after the traffic.
    func waitForScrapes(_ count: Int, gateway: GatewayHarness, until condition: String? = nil) async throws {
        let start = try await scrapes(gateway)
        try await eventually(timeout: .seconds(60), "Prometheus scraped the gateway \(count) more times") {
            guard try await scrapes(gateway) >= start + count else { return false }
            guard let condition else { return true }
            return try await !query(condition, gateway: gateway).isEmpty
        }
    }

    private func scrapes(_ gateway: GatewayHarness) async throws -> Int {
        guard (try? await gateway.send(.GET, url + "/-/ready", key: nil).status) == 200 else { return -1 }
        let result = try await query("sum(count_over_time(up{job=\"sluice\"}[10m]))", gateway: gateway)
        return Int(result.first?["value"] ?? "") ?? 0
    }

    /// Runs an instant query; records an issue unless Prometheus accepts it. Each series'
    /// labels, and its value under `value`.
    @discardableResult
    func query(_ expr: String, gateway: GatewayHarness) async throws -> [[String: String]] {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
        let response = try await gateway.send(.GET, url + "/api/v1/query?query=" + expr.addingPercentEncoding(withAllowedCharacters: allowed)!, key: nil)
        let json = try response.json()
        #expect(response.status == 200 && json["status"] as? String == "success", "\(expr): \(response.text)")
        let result = (json["data"] as? [String: Any])?["result"] as? [[String: Any]] ?? []
        return result.map { series in
            var labels = series["metric"] as? [String: String] ?? [:]
            labels["value"] = (series["value"] as? [Any])?.last as? String
            return labels
        }
    }

    /// Whether every rule has been evaluated and is healthy (records an issue for an error).
    func rulesHealthy(gateway: GatewayHarness) async throws -> Bool {
        let json = try await gateway.send(.GET, url + "/api/v1/rules", key: nil).json()
        let groups = (json["data"] as? [String: Any])?["groups"] as? [[String: Any]] ?? []
        let rules = groups.flatMap { $0["rules"] as? [[String: Any]] ?? [] }
        for rule in rules where rule["health"] as? String == "err" {
            Issue.record("rule \(rule["name"] ?? "?") fails: \(rule["lastError"] ?? "")")
        }
        return !rules.isEmpty && rules.allSatisfy { $0["health"] as? String == "ok" }
    }
}
