import AsyncHTTPClient
import NIOHTTP1
import Foundation
import TestSupport
import Testing
@testable import SluiceGateway

@Suite(.serialized)
struct AdminTests {
    /// Health and readiness answer without a token.
    @Test func healthAndReadiness() async throws {
        try await GatewayHarness.with { gateway in
            let health = try await gateway.send(.GET, gateway.admin + "/healthz", key: nil)
            #expect(health.status == 200)
            let ready = try await gateway.send(.GET, gateway.admin + "/readyz", key: nil)
            #expect(ready.status == 200 && ready.text == #"{"status":"ready"}"#)
        }
    }

    /// A method an admin path does not declare is 405 with `Allow` and a problem document, with
    /// or without a token; HEAD works wherever GET does.
    @Test func undeclaredMethodsAre405WithAllow() async throws {
        try await GatewayHarness.with { gateway in
            let cases: [(NIOHTTP1.HTTPMethod, String, String)] = [
                (.TRACE, "/healthz", "GET, HEAD"), (.POST, "/readyz", "GET, HEAD"), (.DELETE, "/metrics", "GET, HEAD"),
                (.PUT, "/openapi.yaml", "GET, HEAD"), (.DELETE, "/admin/policies", "GET, HEAD"), (.GET, "/admin/policies/reload", "POST"),
                (.PATCH, "/admin/tasks", "GET, HEAD"), (.POST, "/admin/webhooks/dead", "GET, HEAD"),
                (.GET, "/admin/webhooks/dead/msg_x/redrive", "POST"), (.OPTIONS, "/admin/usage", "GET, HEAD"),
            ]
            for (method, path, allow) in cases {
                for token in [nil, TestKeys.operatorToken] {
                    let response = try await gateway.send(method, gateway.admin + path, key: token)
                    try expectProblem(response, 405, "method-not-allowed", path: path)
                    #expect(response.header("Allow") == allow, "\(method) \(path)")
                }
            }
            let head = try await gateway.send(.HEAD, gateway.admin + "/healthz", key: nil)
            #expect(head.status == 200 && head.body.readableBytes == 0)
            #expect(try await gateway.send(.GET, gateway.admin + "/nowhere", key: nil).status == 404)
        }
    }

    /// /metrics is Prometheus text with request counts by partner, version, route and code, and durations.
    @Test func metricsCountRequests() async throws {
        try await GatewayHarness.with { gateway in
            _ = try await gateway.partner(.GET, "/v2/orders/1")
            _ = try await gateway.partner(.GET, "/v2/orders/2")
            _ = try await gateway.partner(.GET, "/v2/orders/1", key: nil)
            let metrics = try await gateway.send(.GET, gateway.admin + "/metrics", key: nil)
            #expect(metrics.status == 200)
            #expect(metrics.header("Content-Type")?.hasPrefix("text/plain") == true)
            let text = metrics.text
            #expect(text.contains(#"sluice_requests_total{partner="acme",version="v2",route="get-order",code="200"} 2"#))
            #expect(text.contains(#"sluice_requests_total{partner="-",version="-",route="-",code="401"} 1"#))
            #expect(text.contains(#"sluice_request_duration_seconds_count{partner="acme",version="v2",route="get-order"} 2"#))
            #expect(text.contains(#"sluice_upstream_duration_seconds_count{upstream="main"} 2"#))
            #expect(text.contains(#"sluice_policy_reload_total{result="error"} 0"#))
        }
    }

    /// The admin API needs a valid token (401), and the operator role for operator actions (403).
    @Test func adminAPIChecksTokensAndRoles() async throws {
        try await GatewayHarness.with { gateway in
            let missing = try await gateway.send(.GET, gateway.admin + "/admin/policies", key: nil)
            #expect(missing.status == 401 && missing.header("WWW-Authenticate") == "Bearer")
            #expect(try missing.json()["type"] as? String == "urn:sluice:problem:unauthorized")
            let wrong = try await gateway.send(.GET, gateway.admin + "/admin/policies", key: "not-a-token")
            #expect(wrong.status == 401)
            let viewer = try await gateway.send(.GET, gateway.admin + "/admin/policies", key: TestKeys.viewerToken)
            #expect(viewer.status == 200)
            let status = try viewer.json()
            #expect((status["version"] as? String)?.count == 16)
            #expect(status["partners"] as? Int == 2)
            #expect(status["last_error"] is NSNull)
            #expect(status["loaded_at"] is String)
            let tooLow = try await gateway.send(.POST, gateway.admin + "/admin/policies/reload", key: TestKeys.viewerToken)
            #expect(tooLow.status == 403)
            #expect(try tooLow.json()["type"] as? String == "urn:sluice:problem:forbidden")
            let allowed = try await gateway.send(.POST, gateway.admin + "/admin/policies/reload", key: TestKeys.operatorToken)
            #expect(allowed.status == 200)
        }
    }
}

@Suite(.serialized)
struct ReloadTests {
    /// Editing a policy file swaps the new set in for new requests, without a restart.
    @Test func validEditIsPickedUp() async throws {
        try await GatewayHarness.with { gateway in
            #expect(try await gateway.partner(.GET, "/v2/invoices/1").status == 404)
            var routes = gateway.policies.files["routes.yaml"]!
            routes += "  - { id: invoices, versions: [v2], method: GET, path: \"/invoices/{id}\", upstream: main, upstream_path: \"/api/echo/{id}\" }\n"
            try gateway.policies.rewrite("routes.yaml", routes)
            try await eventually("the new route answers") { try await gateway.partner(.GET, "/v2/invoices/1").status == 200 }
            let metrics = try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text
            #expect(metrics.contains(#"sluice_policy_reload_total{result="ok"} 1"#))
        }
    }

    /// A broken edit is rejected: counted, reported by /admin/policies, and the running set keeps serving.
    @Test func invalidEditKeepsTheRunningSet() async throws {
        try await GatewayHarness.with { gateway in
            let broken = gateway.policies.files["plans.yaml"]!.replacingOccurrences(of: "per_second: 1000", with: "per_secnd: 1000")
            try gateway.policies.rewrite("plans.yaml", broken)
            try await eventually("the failed reload is counted") {
                try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text
                    .contains(#"sluice_policy_reload_total{result="error"} 1"#)
            }
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
            let status = try await gateway.send(.GET, gateway.admin + "/admin/policies", key: TestKeys.viewerToken).json()
            let lastError = try #require(status["last_error"] as? [String: Any])
            let problems = try #require(lastError["problems"] as? [String])
            #expect(problems.map { $0.components(separatedBy: "policies/").last! } == [
                "plans.yaml:2:17: missing required key 'per_second' in plan 'gold' rate",
                "plans.yaml:2:19: unknown key 'per_secnd' in plan 'gold' rate (did you mean 'per_second'?)",
            ])
            let logged = try gateway.logLines().first { $0["message"] as? String == "policy reload failed; the running policies stay" }
            #expect(logged != nil)
            #expect(try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text.contains("sluice_policy_reload_failing 1"))
            try gateway.policies.rewrite("plans.yaml", gateway.policies.files["plans.yaml"]!)
            try await eventually("a good reload clears sluice_policy_reload_failing") {
                try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text.contains("sluice_policy_reload_failing 0")
            }
        }
    }

    /// The admin reload answers 422 with the problems when the files are broken.
    @Test func adminReloadReportsProblems() async throws {
        try await GatewayHarness.with { gateway in
            try gateway.policies.rewrite("routes.yaml", "default_version: v3\nversions: { v2: { status: current } }\nroutes: []\n")
            let response = try await gateway.send(.POST, gateway.admin + "/admin/policies/reload", key: TestKeys.operatorToken)
            #expect(response.status == 422)
            let problems = try #require(try response.json()["problems"] as? [String])
            #expect(problems.contains { $0.hasSuffix("routes.yaml:1:18: default_version 'v3' is not one of the versions") })
        }
    }
}

@Suite(.serialized)
struct ShutdownTests {
    /// On shutdown /readyz turns 503 while an in-flight request still completes (over HTTP/1.1
    /// and HTTP/2); then nothing listens. The upstream holds the request until the test has seen
    /// the drain begin, so no timing decides the order.
    @Test(arguments: [false, true])
    func drainsInFlightRequests(overHTTP2: Bool) async throws {
        let recorder = RecordingUpstream()
        recorder.reply(200, body: #"{"order":"17"}"#)
        try await withRecordingUpstream(recorder) { gateway in
            let client = overHTTP2 ? gateway.http2 : gateway.http1
            #expect(try await gateway.partner(.GET, "/v2/orders/1", client: client).status == 200)
            recorder.hold()
            let slow = Task {
                var request = HTTPClientRequest(url: gateway.https + "/v2/orders/17")
                request.headers.add(name: "X-API-Key", value: TestKeys.acme)
                let response = try await client.execute(request, timeout: .seconds(10))
                return (response.status.code, try await response.body.collect(upTo: 1 << 16))
            }
            try await eventually("the slow call waits on its upstream") { recorder.heldCount == 1 }
            await gateway.gateway.shutdown()
            try await eventually("readiness reports draining") {
                (try? await gateway.send(.GET, gateway.admin + "/readyz", key: nil).status) == 503
            }
            recorder.release()
            let (status, body) = try await slow.value
            #expect(status == 200)
            #expect(String(buffer: body) == #"{"order":"17"}"#)
            try await eventually("the partner listener stopped") {
                (try? await gateway.send(.GET, gateway.http + "/v2/orders/1", timeout: .milliseconds(150))) == nil
            }
        }
    }
}
