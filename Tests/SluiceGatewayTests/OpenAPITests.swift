import Foundation
import NIOCore
import SluiceCore
import Testing
import TestSupport
import Yams

/// `openapi.yaml` is served on the admin listener, and live answers of the task endpoints and the
/// admin API validate against it (issue 13 point 6).
struct OpenAPITests {
    private static let repositoryDocument = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("openapi.yaml")

    @Test func liveResponsesMatchTheDocument() async throws {
        let clock = ManualClock(.present)  // the usage day stands still: no split across midnight
        try await GatewayHarness.with({ policies in
            policies.addRoutes("{ id: price, versions: [v2], method: POST, path: /price-calculations, upstream: main, upstream_path: /price, async: always }")
        }, clock: clock) { gateway in
            let served = try await gateway.send(.GET, gateway.admin + "/openapi.yaml", key: nil)
            #expect(served.status == 200 && served.header("Content-Type") == "application/yaml")
            #expect(served.text == (try String(contentsOf: Self.repositoryDocument, encoding: .utf8)), "the served document is the repository's")
            let validator = try SchemaValidator(yaml: served.text)
            #expect((validator.document["openapi"] as? String)?.hasPrefix("3.1") == true)
            // The document matches its own description of GET /openapi.yaml (read as YAML, as clients do).
            let ownSchema = try #require(validator.responseSchema(method: "GET", path: "/openapi.yaml", status: 200, contentType: "application/yaml"))
            let problems = validator.validate(try YAMLDecoder().decode(JSONNode.self, from: served.text), ownSchema)
            #expect(problems.isEmpty, "GET /openapi.yaml: \(problems)")

            var checked = 0
            func check(_ response: TestResponse, _ method: String, _ path: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) throws {
                let documentPath = String(path.split(separator: "?").first ?? "")
                let contentType = response.header("Content-Type") ?? ""
                let schema = try #require(
                    validator.responseSchema(method: method, path: documentPath, status: response.status, contentType: contentType),
                    "\(method) \(documentPath) \(response.status) \(contentType) is not documented", sourceLocation: sourceLocation
                )
                let problems = validator.validate(try JSONNode.parse(Data(response.body.readableBytesView)), schema)
                #expect(problems.isEmpty, "\(method) \(path) \(response.status): \(problems)", sourceLocation: sourceLocation)
                checked += 1
            }

            // Partner listener: a task accepted, polled, finished, not cancellable; unknown task; bad key.
            let accepted = try await gateway.acceptTask("/v2/price-calculations")
            try check(accepted, "POST", "/v2/price-calculations")
            let location = try #require(accepted.header("Location"))
            try check(try await gateway.partner(.GET, location), "GET", location)
            _ = try await gateway.finishedTask(location)
            try check(try await gateway.partner(.GET, location), "GET", location)
            try check(try await gateway.partner(.DELETE, location), "DELETE", location)
            let unknown = "/v2/tasks/\(TaskID.random().text)"
            try check(try await gateway.partner(.GET, unknown), "GET", unknown)
            try check(try await gateway.partner(.POST, "/v2/price-calculations", key: "sk_test_nobody"), "POST", "/v2/price-calculations")

            // Admin listener.
            let admin = gateway.admin
            let today = UsageDay(epochMilliseconds: clock.now).text
            let calls: [(String, String, String?)] = [
                ("GET", "/healthz", nil), ("GET", "/readyz", nil),
                ("GET", "/admin/policies", TestKeys.viewerToken), ("GET", "/admin/policies", nil),
                ("POST", "/admin/policies/reload", TestKeys.operatorToken), ("POST", "/admin/policies/reload", TestKeys.viewerToken),
                ("GET", "/admin/tasks", TestKeys.viewerToken), ("GET", "/admin/tasks?status=lost", TestKeys.viewerToken),
                ("GET", "/admin/webhooks/dead", TestKeys.viewerToken), ("GET", "/admin/upstreams", TestKeys.viewerToken),
                ("POST", "/admin/webhooks/dead/msg_unknown/redrive", TestKeys.operatorToken),
                ("GET", "/admin/usage?from=\(today)&to=\(today)&partner=initech", TestKeys.viewerToken),
                ("GET", "/admin/usage?from=\(today)&to=yesterday", TestKeys.viewerToken),
            ]
            for (method, path, token) in calls {
                try check(try await gateway.send(method == "GET" ? .GET : .POST, admin + path, key: token), method, path)
            }
            try await eventually("the task's requests are counted") {
                let usage = try await gateway.send(.GET, admin + "/admin/usage?from=\(today)&to=\(today)", key: TestKeys.viewerToken)
                guard usage.text.contains("\"route\":\"price\"") else { return false }
                try check(usage, "GET", "/admin/usage")
                return true
            }
            #expect(checked == 20)
        }
    }
}
