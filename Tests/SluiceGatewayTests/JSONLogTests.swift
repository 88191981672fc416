import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SluiceCore
import Synchronization
import Testing
import TestSupport
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

/// The log output's writer thread (SPEC §5 logs): a blocked output never holds up the caller;
/// what does not fit the pending limit is dropped, counted and announced; the rest arrives
/// whole and in order.
struct LogOutputTests {
    @Test func aBlockedOutputDropsAndCountsButNeverBlocksTheCaller() async throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let (readEnd, writeEnd) = (ends[0], ends[1])
        defer { close(readEnd) }
        // The only strong reference: emptied at the end, so that the output closes the pipe.
        let holder = NIOLockedValueBox<LogOutput?>(LogOutput(fileDescriptor: writeEnd, owned: true, pendingLimit: 256 << 10))
        @Sendable func output() -> LogOutput? { holder.withLockedValue { $0 } }
        // 4 MiB of numbered lines in 32 KiB chunks, as event loops hand them over; nobody reads
        // the pipe (64 KiB) yet. A thread of its own, so a blocking write fails the test, not hangs it.
        let lineCount = (4 << 20) / 64
        let handedOver = Atomic<Bool>(false)
        Thread {
            var chunk = ""
            for number in 0..<lineCount {
                let line = "{\"n\":\(number)}"
                chunk += line + String(repeating: " ", count: 63 - line.utf8.count) + "\n"
                if chunk.utf8.count >= 32 << 10 {
                    output()?.write(chunk)
                    chunk = ""
                }
            }
            output()?.write(chunk)
            handedOver.store(true, ordering: .releasing)
        }.start()
        try await eventually(timeout: .seconds(10), "every line is handed over with the pipe full") { handedOver.load(ordering: .acquiring) }
        let dropped = try #require(output()?.droppedLines)
        #expect(dropped > lineCount / 2, "at most 256 KiB + the pipe's 64 KiB of 4 MiB can wait: \(dropped) dropped")
        #expect(output()?.flush(timeout: .milliseconds(100)) == false, "the pipe is still full")

        // Read the pipe to its end (the output closes it when it goes away).
        let received = Mutex<[UInt8]>([])
        let ended = Atomic<Bool>(false)
        Thread {
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let count = read(readEnd, &buffer, buffer.count)
                guard count > 0 else { break }
                received.withLock { $0 += buffer[0..<count] }
            }
            ended.store(true, ordering: .releasing)
        }.start()
        #expect(output()?.flush() == true)
        holder.withLockedValue { $0 = nil }
        try await eventually(timeout: .seconds(10), "the pipe reaches its end") { ended.load(ordering: .acquiring) }
        let lines = received.withLock { String(decoding: $0, as: UTF8.self) }.split(separator: "\n")
        let objects = try lines.map { try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any], "\($0)") }
        let numbers = objects.compactMap { $0["n"] as? Int }
        #expect(numbers == numbers.sorted() && Set(numbers).count == numbers.count, "whole lines, in order")
        #expect(numbers.first == 0)
        let notices = objects.filter { $0["message"] as? String == "log lines dropped: the log output did not keep up" }
        #expect(notices.count == 1 && notices.first?["level"] as? String == "warning")
        #expect(notices.first?["lines"] as? Int == dropped)
        #expect(numbers.count + dropped == lineCount)
    }
}
