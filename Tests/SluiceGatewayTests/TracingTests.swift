import Foundation
import NIOCore
import SluiceCore
import Testing
import TestSupport

/// W3C trace context and OTLP export (issue 13 point 5).
@Suite(.serialized)
struct TracingTests {
    private static let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    /// Without an endpoint the partner's trace continues upstream under a new span id, `tracestate`
    /// passes unchanged, and the access line carries the trace id; without a `traceparent` a trace starts.
    @Test func traceparentContinuesWithANewSpanUpstream() async throws {
        try await GatewayHarness.with { gateway in
            let response = try await gateway.partner(.GET, "/v2/orders/1", headers: [("traceparent", Self.incoming), ("tracestate", "vendor=abc")])
            let headers = try #require(try response.json()["headers"] as? [String: String])
            let upstream = try #require(headers["traceparent"])
            #expect(upstream.hasPrefix("00-4bf92f3577b34da6a3ce929d0e0e4736-") && upstream.hasSuffix("-01"))
            #expect(!upstream.contains("00f067aa0ba902b7") && upstream.count == 55)
            #expect(headers["tracestate"] == "vendor=abc")

            let fresh = try await gateway.partner(.GET, "/v2/orders/2", headers: [("traceparent", "00-zz-not-valid")])
            let started = try #require(try (fresh.json()["headers"] as? [String: String])?["traceparent"])
            #expect(RequestIdentity.traceID(of: started) != nil && !started.contains("4bf92f3577b34da6a3ce929d0e0e4736"))

            let lines = try gateway.logLines().filter { $0["message"] as? String == "request" }
            #expect(lines.map { $0["trace_id"] as? String } == ["4bf92f3577b34da6a3ce929d0e0e4736", String(started.dropFirst(3).prefix(32))])
            #expect(lines.allSatisfy { ($0["upstream_ms"] as? Double ?? -1) >= 0 })
        }
    }

    /// With `tracing.otlp_endpoint`, a real OTLP/HTTP receiver gets the server span (child of the
    /// partner's span), the upstream client span (whose id the upstream received), and the task
    /// run and webhook delivery spans in the accepting request's trace; the log and the secrets
    /// stay as they should.
    @Test func spansReachAnOTLPReceiver() async throws {
        try await withOTLPReceiver { receiver, port in
          try await withWebhookReceiver { hooks, hookPort in
            try await GatewayHarness.with({ policies in
                policies.addWebhook(url: "http://127.0.0.1:\(hookPort)/hooks")
                policies.files["gateway.yaml"]! += "tracing:\n  otlp_endpoint: http://127.0.0.1:\(port)\n  otlp_protocol: http/json\n  service_name: sluice-test\n  sample_ratio: 1\n"
                policies.addRoutes("{ id: price, versions: [v2], method: POST, path: /price-calculations, upstream: main, upstream_path: /api/echo, async: always }")
            }) { gateway in
                let response = try await gateway.partner(.GET, "/v2/orders/7", headers: [("traceparent", Self.incoming)])
                let upstream = try #require(try (response.json()["headers"] as? [String: String])?["traceparent"])
                let upstreamSpanID = String(upstream.dropFirst(36).prefix(16))
                // The gateway samples, not the partner: a trace the partner did not sample is recorded too.
                let unsampled = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                #expect(try await gateway.partner(.GET, "/v2/orders/8", headers: [("traceparent", unsampled)]).status == 200)
                let accepted = try await gateway.acceptTask("/v2/price-calculations")
                let task = try await gateway.finishedTask(try #require(accepted.header("Location")))
                let taskUpstream = try #require(((task["result"] as? [String: Any])?["body"] as? [String: Any])?["headers"] as? [String: String])?["traceparent"]

                var spans: [OTLPReceiver.ReceivedSpan] = []
                try await eventually("the spans are exported") {
                    spans = receiver.spans
                    return spans.filter { $0.name == "GET get-order" }.count == 2 && spans.contains { $0.name.hasPrefix("task ") }
                        && spans.contains { $0.name.hasPrefix("webhook ") }
                }
                #expect(receiver.requestPaths == ["/v1/traces"])
                #expect(spans.contains { $0.name == "GET get-order" && $0.traceID == "5bf92f3577b34da6a3ce929d0e0e4736" })
                let server = try #require(spans.first { $0.name == "GET get-order" && $0.traceID == "4bf92f3577b34da6a3ce929d0e0e4736" })
                #expect(server.traceID == "4bf92f3577b34da6a3ce929d0e0e4736" && server.parentSpanID == "00f067aa0ba902b7")
                #expect(server.kind == 2 && server.service == "sluice-test")
                #expect(server.attributes["sluice.partner"] == "acme" && server.attributes["http.route"] == "get-order")
                #expect(server.attributes["http.response.status_code"] == "200")
                let client = try #require(spans.first { $0.name == "upstream main" && $0.traceID == server.traceID })
                #expect(client.parentSpanID == server.spanID && client.kind == 3)
                #expect(client.spanID == upstreamSpanID, "the upstream received the client span's id")

                let acceptSpan = try #require(spans.first { $0.name == "POST price" })
                let run = try #require(spans.first { $0.name == "task price" })
                #expect(run.traceID == acceptSpan.traceID && run.parentSpanID == acceptSpan.spanID && run.kind == 5)
                #expect(taskUpstream == "00-\(run.traceID)-\(run.spanID)-01", "the task's upstream call is the run span")
                let delivery = try #require(spans.first { $0.name == "webhook task.succeeded" })
                #expect(delivery.traceID == acceptSpan.traceID && delivery.parentSpanID == acceptSpan.spanID && delivery.kind == 4)
                #expect(hooks.deliveries.count == 1 && hooks.deliveries.allSatisfy(\.verified))

                let lines = try gateway.logLines().filter { $0["message"] as? String == "request" && $0["route"] as? String == "get-order" }
                #expect(lines.first?["trace_id"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
                let metrics = try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text
                #expect(metrics.contains("sluice_trace_spans_dropped_total 0"))
                let log = try String(contentsOf: gateway.logFile, encoding: .utf8)
                for secret in [TestKeys.acme, WebhookReceiver.secret, TestKeys.operatorToken] { #expect(!log.contains(secret)) }
            }
          }
        }
    }

    /// `tracing.sample_ratio: 0`: partner requests record no spans (their trace still propagates);
    /// task runs are recorded all the same.
    @Test func unsampledRequestsRecordNothing() async throws {
        try await withOTLPReceiver { receiver, port in
            try await GatewayHarness.with({ policies in
                policies.files["gateway.yaml"]! += "tracing:\n  otlp_endpoint: http://127.0.0.1:\(port)/v1/traces\n  otlp_protocol: http/json\n  sample_ratio: 0\n"
                policies.addRoutes("{ id: price, versions: [v2], method: POST, path: /price-calculations, upstream: main, upstream_path: /api/echo, async: always }")
            }) { gateway in
                let response = try await gateway.partner(.GET, "/v2/orders/7", headers: [("traceparent", Self.incoming)])
                let upstream = try #require(try (response.json()["headers"] as? [String: String])?["traceparent"])
                #expect(upstream.hasPrefix("00-4bf92f3577b34da6a3ce929d0e0e4736-"))
                let accepted = try await gateway.acceptTask("/v2/price-calculations")
                _ = try await gateway.finishedTask(try #require(accepted.header("Location")))
                try await eventually("the task run is exported") { receiver.spans.contains { $0.name == "task price" } }
                #expect(receiver.spans.allSatisfy { $0.name == "task price" }, "\(receiver.spans.map(\.name))")
            }
        }
    }
}
