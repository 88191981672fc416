import Foundation
import NIOPosix
import NIOSSL
@testable import SluiceGateway
import Testing
import TestSupport

/// `/metrics` is valid Prometheus text exposition with every family SPEC §5 names, its type and labels.
struct MetricsTests {
    /// One parsed exposition: families by name (type and help) and samples.
    struct Exposition {
        struct Sample {
            let name: String
            let labels: [String: String]
            let value: Double
        }

        var types: [String: String] = [:]
        var helps: [String: String] = [:]
        var samples: [Sample] = []

        /// Parses the text format (0.0.4); records an issue for any line that is not valid.
        init(_ text: String) {
            for line in text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init) {
                if line.hasPrefix("# TYPE ") {
                    let parts = line.dropFirst(7).split(separator: " ")
                    #expect(parts.count == 2, "\(line)")
                    if parts.count == 2 {
                        #expect(types[String(parts[0])] == nil, "TYPE twice: \(line)")
                        types[String(parts[0])] = String(parts[1])
                    }
                } else if line.hasPrefix("# HELP ") {
                    let parts = line.dropFirst(7).split(separator: " ", maxSplits: 1)
                    helps[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
                } else if line.hasPrefix("#") {
                    continue
                } else if let sample = Self.sample(line) {
                    samples.append(sample)
                } else {
                    Issue.record("not a sample line: \(line)")
                }
            }
        }

        private static func sample(_ line: String) -> Sample? {
            guard let match = line.wholeMatch(of: /([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)/) else { return nil }
            var labels: [String: String] = [:]
            if let body = match.output.3 {
                for pair in body.matches(of: /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/) {
                    labels[String(pair.output.1)] = String(pair.output.2)
                }
            }
            guard let value = Double(match.output.4) ?? (match.output.4 == "+Inf" ? .infinity : nil) else { return nil }
            return Sample(name: String(match.output.1), labels: labels, value: value)
        }

        /// The family a sample belongs to (a histogram's `_bucket`, `_sum` and `_count` belong to it).
        func family(of sample: Sample) -> String {
            for suffix in ["_bucket", "_sum", "_count"] where sample.name.hasSuffix(suffix) {
                let base = String(sample.name.dropLast(suffix.count))
                if types[base] == "histogram" { return base }
            }
            return sample.name
        }
    }

    @Test func exposesEveryFamilyWithItsTypeAndLabels() async throws {
        try await GatewayHarness.with({ policies in
            policies.setPlan("{ rate: { per_second: 0.01, burst: 3 }, quota: { requests: 1000, per: day } }")
            policies.addRoutes("{ id: price, versions: [v2], method: POST, path: /price-calculations, upstream: main, upstream_path: /price, async: always }")
        }) { gateway in
            let accepted = try await gateway.acceptTask("/v2/price-calculations")
            #expect(accepted.status == 202)
            // Waited for on the admin API: partner polls would take the bucket's tokens.
            try await eventually("the task finishes") {
                try await gateway.send(.GET, gateway.admin + "/admin/tasks?status=succeeded", key: TestKeys.viewerToken).text.contains("tsk_")
            }
            _ = try await gateway.partner(.GET, "/v2/orders/1")
            _ = try await gateway.partner(.GET, "/v2/orders/2")
            _ = try await gateway.partner(.GET, "/v2/orders/3")
            _ = try await gateway.partner(.GET, "/v2/unknown/path/\(UUID())", key: "sk_test_not_a_partner")
            var exposition = Exposition("")
            try await eventually("the task gauges caught up") {
                exposition = Exposition(try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text)
                return exposition.samples.contains { $0.name == "sluice_tasks" && $0.labels["status"] == "succeeded" && $0.value == 1 }
            }

            let expected: [(String, String, Set<String>)] = [
                ("sluice_requests_total", "counter", ["partner", "version", "route", "code"]),
                ("sluice_request_duration_seconds", "histogram", ["partner", "version", "route"]),
                ("sluice_upstream_duration_seconds", "histogram", ["upstream"]),
                ("sluice_ratelimit_rejections_total", "counter", ["partner", "reason"]),
                ("sluice_breaker_state", "gauge", ["upstream"]),
                ("sluice_tasks", "gauge", ["status"]),
                ("sluice_task_duration_seconds", "histogram", ["route", "phase"]),
                ("sluice_webhook_deliveries_total", "counter", ["result"]),
                ("sluice_webhooks_dead", "gauge", []),
                ("sluice_store_errors_total", "counter", []),
                ("sluice_policy_reload_total", "counter", ["result"]),
                ("sluice_idempotency_total", "counter", ["result"]),
                ("sluice_task_queue_oldest_seconds", "gauge", []),
                ("sluice_quota_used_ratio", "gauge", ["partner"]),
                ("sluice_policy_reload_failing", "gauge", []),
            ]
            for (name, type, labels) in expected {
                #expect(exposition.types[name] == type, "\(name)")
                #expect(exposition.helps[name]?.isEmpty == false, "\(name) has no HELP")
                let samples = exposition.samples.filter { exposition.family(of: $0) == name }
                #expect(!samples.isEmpty, "\(name) has no samples")
                for sample in samples {
                    var keys = Set(sample.labels.keys)
                    if sample.name.hasSuffix("_bucket") { #expect(keys.remove("le") != nil, "\(sample.name) without le") }
                    #expect(keys == labels, "\(sample.name) \(sample.labels)")
                }
            }
            // Every sample belongs to a declared family; histograms are complete and cumulative.
            for sample in exposition.samples {
                #expect(exposition.types[exposition.family(of: sample)] != nil, "\(sample.name) has no TYPE")
            }
            for (family, type) in exposition.types where type == "histogram" {
                func seriesKey(_ sample: Exposition.Sample) -> String {
                    sample.labels.filter { $0.key != "le" }.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
                }
                let series = Dictionary(grouping: exposition.samples.filter { $0.name == family + "_bucket" }, by: seriesKey)
                for (labels, buckets) in series {
                    let ordered = buckets.map { (Double($0.labels["le"]!) ?? .infinity, $0.value) }.sorted { $0.0 < $1.0 }
                    #expect(ordered.last?.0 == .infinity, "\(family){\(labels)} has no +Inf bucket")
                    #expect(zip(ordered, ordered.dropFirst()).allSatisfy { $0.1 <= $1.1 }, "\(family){\(labels)} not cumulative")
                    let count = exposition.samples.first { $0.name == family + "_count" && seriesKey($0) == labels }
                    #expect(count?.value == ordered.last?.1, "\(family){\(labels)} _count")
                    #expect(exposition.samples.contains { $0.name == family + "_sum" }, "\(family) has no _sum")
                }
            }
            // Label values stay bounded: route ids, not paths; unknown callers under one label.
            let requests = exposition.samples.filter { $0.name == "sluice_requests_total" }
            #expect(requests.allSatisfy { !($0.labels["route"] ?? "").contains("/") })
            #expect(requests.contains { $0.labels == ["partner": "-", "version": "-", "route": "-", "code": "401"] })
            #expect(exposition.samples.contains { $0.name == "sluice_ratelimit_rejections_total" && $0.labels == ["partner": "acme", "reason": "rate"] })
            // Three of acme's requests were admitted (the task and two GETs: a burst of 3), the third GET refused.
            #expect(exposition.samples.contains { $0.name == "sluice_quota_used_ratio" && $0.labels == ["partner": "acme"] && $0.value == 3.0 / 1_000 })
        }
    }
}

/// The gauges that follow the policies: route SLOs (only routes with `slo:`) and when the
/// partner listener's certificate and client CA expire; a reload replaces them.
@Suite(.serialized)
struct PolicyGaugeTests {
    @Test func routeSLOsAndCertificateExpiryFollowThePolicies() async throws {
        let slo = "slo: { p95: 10m, p99: 20m }"
        try await GatewayHarness.with({ policies in
            policies.addRoutes("{ id: price, versions: [v2], method: POST, path: /price-calculations, upstream: main, async: always, \(slo) }")
        }) { gateway in
            func gauges(_ name: String) async throws -> [String: Double] {
                let exposition = MetricsTests.Exposition(try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text)
                let samples = exposition.samples.filter { $0.name == name }
                #expect(samples.isEmpty || exposition.types[name] == "gauge")
                return samples.reduce(into: [:]) { found, sample in
                    found[sample.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")] = sample.value
                }
            }
            #expect(try await gauges("sluice_route_slo_seconds") == ["quantile=0.95,route=price": 600, "quantile=0.99,route=price": 1_200])
            let server = try #require(try NIOSSLCertificate.fromPEMFile(gateway.pki.serverCertificatePath).first)
            let ca = try #require(try NIOSSLCertificate.fromPEMFile(gateway.pki.caPath).first)
            #expect(
                try await gauges("sluice_tls_certificate_expiry_timestamp_seconds")
                    == ["listener=https": Double(server.notValidAfter), "listener=https-client-ca": Double(ca.notValidAfter)]
            )
            #expect(Double(server.notValidAfter) > Date().timeIntervalSince1970, "the test certificate is valid now")
            // A renewed certificate put in place: the reload updates the gauge.
            let renewedUntil = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 + 10 * 86_400).rounded(.down))
            let renewed = try gateway.pki.selfSignedServerCertificate("renewed", notAfter: renewedUntil)
            let gatewayFile = gateway.policies.files["gateway.yaml"]!
            try gateway.policies.rewrite(
                "gateway.yaml",
                gatewayFile.replacingOccurrences(of: gateway.pki.serverCertificatePath, with: renewed.certificate)
                    .replacingOccurrences(of: gateway.pki.serverKeyPath, with: renewed.key)
            )
            try await eventually("the reload read the renewed certificate") {
                try await gauges("sluice_tls_certificate_expiry_timestamp_seconds")["listener=https"] == renewedUntil.timeIntervalSince1970
            }

            let routes = gateway.policies.files["routes.yaml"]!
            try gateway.policies.rewrite("routes.yaml", routes.replacingOccurrences(of: slo, with: "slo: { p99: 15m }"))
            try await eventually("the reload replaced the SLO series") {
                try await gauges("sluice_route_slo_seconds") == ["quantile=0.99,route=price": 900]
            }
            try gateway.policies.rewrite("routes.yaml", routes.replacingOccurrences(of: ", \(slo)", with: ""))
            try await eventually("a route without slo: exports none") { try await gauges("sluice_route_slo_seconds").isEmpty }
        }
    }
}

/// Request series handles are cached per event loop; every loop, and a loop outside the group,
/// counts into the same series.
struct RequestSeriesCountingTests {
    @Test func everyLoopCountsIntoOneSeries() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let outside = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let metrics = GatewayMetrics(group: group)
        var loops = Array(group.makeIterator())
        loops.append(outside.next())
        for loop in loops {
            for _ in 0..<2 {
                try await loop.submit {
                    metrics.requestFinished(partner: "acme", version: "v2", route: "get-order", status: 200, duration: .milliseconds(3), on: loop)
                }.get()
            }
        }
        let text = metrics.render()
        #expect(text.contains(#"sluice_requests_total{partner="acme",version="v2",route="get-order",code="200"} 6"#))
        #expect(text.contains(#"sluice_request_duration_seconds_count{partner="acme",version="v2",route="get-order"} 6"#))
        try await group.shutdownGracefully()
        try await outside.shutdownGracefully()
    }
}
