import Foundation
import Logging
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
