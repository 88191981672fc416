import Foundation
import Logging
import NIOCore
import SluiceCore
import Testing
@testable import SluiceGateway

/// The JSON log line format (SPEC §5): one object per line, RFC 3339 timestamp, masked values.
struct JSONLogTests {
    @Test func lineIsValidJSONWithMaskedValues() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-log-\(UUID().uuidString).jsonl").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let output = try LogOutput(appendingTo: path)
        let handler = JSONLogHandler(label: "test", output: output)
        let logger = Logger(label: "test") { _ in handler }
        logger.info(
            "order for jane.doe@acme.example \"quoted\"",
            metadata: ["status": .stringConvertible(201), "path": .string("/v2/orders/\u{1}x"), "partner": .string("acme")]
        )
        output.flush()

        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasSuffix("\n") && text.split(separator: "\n").count == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let timestamp = try #require(object["timestamp"] as? String)
        #expect(timestamp.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/) != nil)
        #expect(object["level"] as? String == "info")
        #expect(object["message"] as? String == "order for j***@acme.example \"quoted\"")
        #expect(object["status"] as? Int == 201)
        #expect(object["path"] as? String == "/v2/orders/\u{1}x")
        #expect(object["partner"] as? String == "acme")
        // Keys after the fixed three are sorted.
        #expect(text.range(of: "\"partner\"")!.lowerBound < text.range(of: "\"path\"")!.lowerBound)
    }
}

/// Access lines (rendered per event loop, without the logger) have the same shape.
struct AccessLogLineTests {
    @Test func accessLineIsValidJSONWithMaskedValues() throws {
        let head = PartnerRequestHead(
            method: .GET, target: "/v2/orders/jane.doe@acme.example?x=1", headers: ["X-Request-Id": "req-1"], version: .http1_1
        )
        var record = RequestRecord(head, identifiers: IdentifierGenerator(), started: .now())
        record.partner = "acme"
        record.route = "get-order"
        record.status = 502
        record.upstreamError = "refused by \"orders\"\n"
        record.upstream = "orders"
        record.target = "http://orders.internal:8080 (192.168.100.200)"
        var line = ""
        AccessLog.render(record, status: 502, duration: .microseconds(1_500), level: .warning, into: &line)
        #expect(line.hasSuffix("}\n") && line.split(separator: "\n").count == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect((object["timestamp"] as? String)?.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/) != nil)
        #expect(object["level"] as? String == "warning" && object["message"] as? String == "request")
        #expect(object["request_id"] as? String == "req-1" && object["status"] as? Int == 502)
        #expect(object["path"] as? String == "/v2/orders/j***@acme.example", "personal data in the path is masked")
        #expect(object["error"] as? String == "refused by \"orders\"\n")
        #expect(object["duration_ms"] as? Double == 1.5)
        #expect(object["partner"] as? String == "acme" && object["route"] as? String == "get-order" && object["version"] == nil)
        #expect(object["target"] as? String == "http://orders.internal:8080 (192.168.100.200)", "policy addresses are not phone numbers")
    }
}

/// A real gateway's log: every line one JSON object, access lines with the SPEC fields, event
/// lines for reloads, and no key, token or personal data in clear.
struct GatewayLogTests {
    @Test func everyLineIsJSONAndMasked() async throws {
        try await GatewayHarness.with { gateway in
            #expect(try await gateway.partner(.GET, "/v2/orders/jane.doe%40acme.example").status == 200)
            #expect(try await gateway.partner(.GET, "/v2/orders/1", key: "sk_live_not_a_real_key_123").status == 401)
            #expect(try await gateway.send(.POST, gateway.admin + "/admin/policies/reload", key: TestKeys.operatorToken).status == 200)
            gateway.gateway.flushLogs()
            let text = try String(contentsOf: gateway.logFile, encoding: .utf8)
            let lines = text.split(separator: "\n")
            let objects = try lines.map { try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any], "\($0)") }
            #expect(objects.count == lines.count)
            let access = objects.filter { $0["message"] as? String == "request" }
            #expect(access.count == 2)
            for line in access {
                for key in ["timestamp", "level", "message", "request_id", "trace_id", "method", "path", "status", "duration_ms", "bytes_in", "bytes_out"] {
                    #expect(line[key] != nil, "\(key) missing in \(line)")
                }
            }
            let served = try #require(access.first { $0["status"] as? Int == 200 })
            #expect(served["path"] as? String == "/v2/orders/j***@acme.example")
            #expect(served["partner"] as? String == "acme" && served["version"] as? String == "v2" && served["route"] as? String == "get-order")
            #expect((served["upstream_ms"] as? Double).map { $0 >= 0 } == true && (served["bytes_out"] as? Int ?? 0) > 0)
            let refused = try #require(access.first { $0["status"] as? Int == 401 })
            #expect(refused["problem"] as? String == "unauthorized" && refused["partner"] == nil)
            #expect(objects.contains { $0["message"] as? String == "policies reloaded" })
            for secret in [TestKeys.acme, "sk_live_not_a_real_key_123", TestKeys.operatorToken, "jane.doe"] {
                #expect(!text.contains(secret), "\(secret) is in the log")
            }
        }
    }
}
