import Foundation
import SluiceCore
import Testing

/// A generator that always answers the same value: jitter becomes predictable.
private struct FixedRandom: RandomNumberGenerator {
    var value: UInt64
    mutating func next() -> UInt64 { value }
}

struct WebhookSignatureTests {
    private let secret = try! WebhookSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")

    /// The Standard Webhooks reference vector signs to the published value.
    @Test func signsTheReferenceVector() {
        let signature = WebhookSignature.sign(
            id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1_614_265_330, body: Array(#"{"test": 2432232314}"#.utf8), secret: secret
        )
        #expect(signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
    }

    /// Verification accepts the reference signature among others and refuses a changed body, id or stale timestamp.
    @Test func verifiesLikeAReceiver() {
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
        let body = Array(#"{"test": 2432232314}"#.utf8)
        let header = "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        #expect(WebhookSignature.verify(signatures: header, id: id, timestamp: 1_614_265_330, body: body, secret: secret, now: 1_614_265_330))
        #expect(!WebhookSignature.verify(signatures: header, id: id, timestamp: 1_614_265_330, body: body + [0x20], secret: secret, now: 1_614_265_330))
        #expect(!WebhookSignature.verify(signatures: header, id: id + "x", timestamp: 1_614_265_330, body: body, secret: secret, now: 1_614_265_330))
        #expect(!WebhookSignature.verify(signatures: header, id: id, timestamp: 1_614_265_330, body: body, secret: secret, now: 1_614_265_330 + 301))
    }

    /// Secrets without the prefix, with broken base64, or of a hostile length are refused with a reason.
    @Test func refusesMalformedSecrets() {
        #expect(throws: WebhookSecret.Problem.missingPrefix) { try WebhookSecret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") }
        #expect(throws: WebhookSecret.Problem.notBase64) { try WebhookSecret("whsec_not base64!") }
        #expect(throws: WebhookSecret.Problem.tooShort(bytes: 3)) { try WebhookSecret("whsec_YWJj") }
        let huge = "whsec_" + Data(repeating: 7, count: 4096).base64EncodedString()
        #expect(throws: WebhookSecret.Problem.tooLong(bytes: 4096)) { try WebhookSecret(huge) }
        #expect("\(secret)" == "whsec_…")
    }
}

struct WebhookDeliveryTests {
    private let schedule: [Duration] = [.seconds(5), .seconds(300), .seconds(1800)]

    /// Failures wait the schedule's delays stretched by at most a fifth, then the delivery is dead with its last error.
    @Test func retriesOnTheScheduleThenGoesDead() {
        var delivery = WebhookDelivery(schedule: schedule)
        var none = FixedRandom(value: 0)
        var most = FixedRandom(value: .max)
        let actions = [
            delivery.attempted(.failed(reason: "500", retryAfter: nil), using: &none),
            delivery.attempted(.failed(reason: "timeout", retryAfter: nil), using: &most),
            delivery.attempted(.failed(reason: "502", retryAfter: nil), using: &none),
            delivery.attempted(.failed(reason: "503", retryAfter: nil), using: &none),
        ]
        #expect(actions[0] == .retry(after: .seconds(5)))
        guard case .retry(let stretched) = actions[1] else {
            Issue.record("expected a retry, got \(actions[1])")
            return
        }
        #expect(stretched > .seconds(300) && stretched < .seconds(360))
        #expect(actions[2...] == [.retry(after: .seconds(1800)), .deadLetter(lastError: "503")])
        #expect(delivery.attempts == 4)
        #expect(delivery.lastError == "503")
    }

    /// A later Retry-After is honoured, capped at the schedule's longest delay; an earlier one is not.
    @Test func honoursALaterRetryAfter() {
        var random = FixedRandom(value: 0)
        var delivery = WebhookDelivery(schedule: schedule)
        let actions = [
            delivery.attempted(.failed(reason: "429", retryAfter: .seconds(60)), using: &random),
            delivery.attempted(.failed(reason: "429", retryAfter: .seconds(1)), using: &random),
            delivery.attempted(.failed(reason: "429", retryAfter: .seconds(86_400 * 365)), using: &random),
        ]
        #expect(actions == [.retry(after: .seconds(60)), .retry(after: .seconds(300)), .retry(after: .seconds(1800))])
    }

    /// 2xx ends it, 410 disables the endpoint, a refused address goes straight to the dead letters; a redrive starts over.
    @Test func endsOnSuccessGoneOrRefusal() {
        var random = FixedRandom(value: 0)
        var delivered = WebhookDelivery(schedule: schedule)
        var gone = WebhookDelivery(schedule: schedule)
        var refused = WebhookDelivery(schedule: schedule)
        let actions = [
            delivered.attempted(.delivered, using: &random),
            gone.attempted(.gone, using: &random),
            refused.attempted(.refused(reason: "loopback"), using: &random),
        ]
        #expect(actions == [.done, .disableEndpoint, .deadLetter(lastError: "loopback")])
        refused.redrive()
        #expect(refused.attempts == 0 && refused.lastError == nil)
        let afterRedrive = refused.attempted(.failed(reason: "500", retryAfter: nil), using: &random)
        #expect(afterRedrive == .retry(after: .seconds(5)))
    }
}

struct TaskLifecycleTests {
    /// A task runs queued → running → succeeded with versions 1, 2, 3 and the accepting request's id on each entry.
    @Test func runsToSuccessWithAHistory() {
        var task = TaskLifecycle(acceptedAt: 1_000, instance: "a", requestID: "req-1")
        #expect(task.status == .queued && task.version == 1)
        let started = task.start(at: 1_500, instance: "b")
        let finished = task.finish(succeeded: true, at: 9_000, instance: "b")
        #expect(started == .run && finished)
        #expect(task.history.map(\.status) == [.queued, .running, .succeeded])
        #expect(task.history.map(\.version) == [1, 2, 3])
        #expect(task.history.allSatisfy { $0.requestID == "req-1" })
        #expect(task.createdAt == 1_000 && task.updatedAt == 9_000 && task.attempts == 1)
    }

    /// A takeover starts a second run; the dead runner's late result is ignored, the new runner's counts.
    @Test func ignoresTheLateResultOfATakenOverRun() {
        var task = TaskLifecycle(acceptedAt: 0, instance: "a", requestID: "r")
        _ = task.start(at: 10, instance: "a")
        let takeover = task.start(at: 40_000, instance: "b")
        let late = task.finish(succeeded: false, at: 41_000, instance: "a")
        let current = task.finish(succeeded: true, at: 42_000, instance: "b")
        #expect(takeover == .run && !late && current)
        #expect(task.attempts == 2)
        #expect(task.status == .succeeded)
        #expect(task.history[2].note == "taken over from a")
    }

    /// Only a queued task is cancelled; a cancelled one is skipped by workers; running or finished ones conflict.
    @Test func cancelsOnlyQueuedTasks() {
        var queued = TaskLifecycle(acceptedAt: 0, instance: "a", requestID: "r")
        let cancelled = queued.cancel(at: 5, instance: "a")
        let skipped = queued.start(at: 6, instance: "b")
        #expect(cancelled == .cancelled && skipped == .skip)
        #expect(queued.status == .cancelled && queued.version == 2)
        var running = TaskLifecycle(acceptedAt: 0, instance: "a", requestID: "r")
        _ = running.start(at: 1, instance: "a")
        let whileRunning = running.cancel(at: 2, instance: "a")
        _ = running.finish(succeeded: false, at: 3, instance: "a")
        let whenFinished = running.cancel(at: 4, instance: "a")
        #expect(whileRunning == .conflict(.running) && whenFinished == .conflict(.failed))
        #expect(running.version == 3)
    }

    /// Runs that are taken over are lost; after `maxLostRuns` of them the next start fails the
    /// task with the reason instead of running it again. Runs handed back (shutdown, upstream
    /// unavailable) are not lost.
    @Test func givesUpAfterTooManyLostRuns() {
        var task = TaskLifecycle(acceptedAt: 0, instance: "a", requestID: "r")
        var starts: [TaskLifecycle.StartAction] = []
        starts.append(task.start(at: 1, instance: "a", maxLostRuns: 3))
        let handedBack = task.handBack(at: 2, instance: "a")
        starts.append(task.start(at: 3, instance: "b", maxLostRuns: 3))
        starts.append(task.start(at: 4, instance: "c", maxLostRuns: 3))  // b's run is lost (1)
        starts.append(task.start(at: 5, instance: "d", maxLostRuns: 3))  // c's run is lost (2)
        #expect(handedBack && task.lostRuns == 2)
        starts.append(task.start(at: 6, instance: "e", maxLostRuns: 3))  // d's would be the third
        #expect(starts == [.run, .run, .run, .run, .giveUp])
        #expect(task.status == .failed && task.attempts == 4)
        #expect(task.history.last?.note == TaskLifecycle.gaveUpNote(3))
        let late = task.finish(succeeded: true, at: 7, instance: "d")
        #expect(!late, "the lost run's late result does not count")
    }

    /// A task handed back at shutdown is queued again and run by another instance; times never go backwards.
    @Test func handsBackAndKeepsTimeMonotonic() {
        var task = TaskLifecycle(acceptedAt: 100, instance: "a", requestID: "r")
        _ = task.start(at: 200, instance: "a")
        let byStranger = task.handBack(at: 300, instance: "b")
        let byRunner = task.handBack(at: 300, instance: "a")
        #expect(!byStranger && byRunner)
        #expect(task.status == .queued)
        let rerun = task.start(at: 250, instance: "b")  // b's clock is behind
        #expect(rerun == .run)
        #expect(task.history.map(\.at) == [100, 200, 300, 300])
    }
}

struct ReceiverAddressRuleTests {
    private func refusal(_ literal: String) -> ReceiverAddressRule.Refusal? {
        guard let bytes = ReceiverAddressRule.bytes(of: literal) else {
            Issue.record("\(literal) did not parse")
            return .reserved
        }
        return ReceiverAddressRule.refusal(address: bytes)
    }

    /// Public unicast addresses are allowed.
    @Test func allowsPublicAddresses() {
        for literal in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2a00:1450:4001:82b::200e", "64:ff9b::808:808", "2002:808:808::1"] {
            #expect(refusal(literal) == nil, "\(literal)")
        }
    }

    /// Loopback, private, link-local (metadata), CGNAT, unique-local, multicast, unspecified and reserved addresses are refused.
    @Test func refusesNonPublicAddresses() {
        let cases: [(String, ReceiverAddressRule.Refusal)] = [
            ("127.0.0.1", .loopback), ("127.8.9.10", .loopback), ("::1", .loopback), ("10.1.2.3", .privateNetwork),
            ("172.16.0.1", .privateNetwork), ("172.31.255.255", .privateNetwork), ("192.168.1.1", .privateNetwork),
            ("169.254.169.254", .linkLocal), ("fe80::1", .linkLocal), ("100.64.0.1", .sharedAddressSpace),
            ("100.127.255.254", .sharedAddressSpace), ("fc00::1", .uniqueLocal), ("fd12:3456::1", .uniqueLocal),
            ("224.0.0.1", .multicast), ("ff02::1", .multicast), ("0.0.0.0", .unspecified), ("::", .unspecified),
            ("240.0.0.1", .reserved), ("255.255.255.255", .broadcast), ("192.0.2.1", .documentation), ("2001:db8::1", .documentation),
            ("198.18.0.1", .benchmarking), ("fec0::1", .siteLocal), ("2001::1", .reserved), ("100::1", .reserved),
        ]
        for (literal, expected) in cases { #expect(refusal(literal) == expected, "\(literal)") }
    }

    /// IPv4 addresses hidden in IPv6 forms (mapped, compatible, NAT64, 6to4) are judged by the IPv4 address.
    @Test func seesThroughEmbeddedIPv4() {
        #expect(refusal("::ffff:127.0.0.1") == .loopback)
        #expect(refusal("::ffff:a9fe:a9fe") == .linkLocal)
        #expect(refusal("::10.0.0.1") == .privateNetwork)
        #expect(refusal("64:ff9b::7f00:1") == .loopback)
        #expect(refusal("64:ff9b:1::a00:1") == .privateNetwork)
        #expect(refusal("2002:a9fe:a9fe::1") == .linkLocal)
        #expect(refusal("2002:c0a8:101::") == .privateNetwork)
    }

    /// Malformed literals do not parse (so they are resolved as names, never trusted as addresses).
    @Test func refusesToParseMalformedLiterals() {
        for literal in ["1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1..2.3", "::1::2", "1:2:3:4:5:6:7:8:9", "12345::1", "g::1", ":::", "", "１.2.3.4"] {
            #expect(ReceiverAddressRule.bytes(of: literal) == nil, "\(literal)")
        }
        #expect(ReceiverAddressRule.refusal(address: [1, 2, 3]) == .reserved)
    }
}

struct TaskRecordTests {
    /// Random ids parse back, land in a stable shard, and hostile text is not an id.
    @Test func idsParseAndShardStably() {
        let id = TaskID.random()
        #expect(TaskID(id.text) == id)
        #expect(TaskID("tsk_0123456789abcdefghijklmn")?.shard(of: 16) == TaskID("tsk_0123456789abcdefghijklmn")?.shard(of: 16))
        let shards = Set((0..<200).map { _ in TaskID.random().shard(of: 16) })
        #expect(shards.count > 10)
        for hostile in ["", "tsk_", "tsk_0123456789abcdefghijklm", "tsk_0123456789abcdefghijklmno", "tsk_0123456789ABCDEFGHIJKLMN", "tsk_../../../etc/passwd/xxx",
            "TSK_0123456789abcdefghijklmn", "tsk_0123456789abcdefghijkl%6e", String(repeating: "a", count: 100_000)]
        {
            #expect(TaskID(hostile) == nil, "\(hostile.prefix(40))")
        }
    }

    /// A task's record, request and result are written by hand as the JSON `JSONEncoder` would
    /// write: the same members and values (so a member added to one of the types and not
    /// written fails here), hostile text escaped, nil members left out, all read back whole.
    @Test func handWrittenRecordRequestAndResultAreTheEncodersJSON() throws {
        let hostile = "q\"b\\s/ \u{0}\u{1}\n\t\r\u{1F}\u{7F} é ✓ 🚚 </script> \\u0041"
        let headers = [TaskHeader("x-a", hostile), TaskHeader(hostile, ""), TaskHeader("x-a", "2")]
        let request = TaskRequest(
            method: "POST", upstream: hostile, pathAndQuery: "/price?q=\(hostile)", headers: headers, body: Data([0, 0xFF, 0x22, 0x5C, 10]), timeoutMilliseconds: 1_800_000
        )
        let result = TaskResult(status: 201, headers: headers, body: Data(#"{"price":12.5}"#.utf8))
        let empty = TaskRequest(method: "GET", upstream: "u", pathAndQuery: "/", headers: [], body: Data())
        let minimal = TaskRecord(
            id: TaskID("tsk_0123456789abcdefghijklmn")!, partner: "acme", version: "v2", route: "price",
            lifecycle: TaskLifecycle(acceptedAt: 1_764_633_600_000, instance: "gw-a", requestID: "req-1")
        )
        var full = TaskRecord(
            id: TaskID("tsk_0123456789abcdefghijklmn")!, partner: hostile, version: hostile, route: hostile,
            lifecycle: TaskLifecycle(acceptedAt: 1_764_633_600_000, instance: hostile, requestID: hostile, note: hostile), traceparent: hostile, upstream: hostile
        )
        _ = full.lifecycle.start(at: 1_764_633_601_000, instance: hostile)
        full.result = result
        full.failure = hostile
        #expect(full.lifecycle.runner != nil)
        let encoder = JSONEncoder()
        for (handWritten, byEncoder) in [
            (request.encoded(), try encoder.encode(request)), (result.encoded(), try encoder.encode(result)), (empty.encoded(), try encoder.encode(empty)),
            (minimal.encoded(), try encoder.encode(minimal)), (full.encoded(), try encoder.encode(full)),
        ] {
            let mine = try #require(try JSONSerialization.jsonObject(with: Data(handWritten.utf8)) as? NSDictionary)
            let theirs = try #require(try JSONSerialization.jsonObject(with: byEncoder) as? NSDictionary)
            #expect(mine.isEqual(to: theirs as! [AnyHashable: Any]), "\(handWritten)")
        }
        #expect(TaskRequest(encoded: Array(request.encoded().utf8)) == request)
        #expect(TaskResult(encoded: Array(result.encoded().utf8)) == result)
        #expect(TaskRequest(encoded: Array(empty.encoded().utf8)) == empty)
        #expect(TaskRecord(encoded: Array(minimal.encoded().utf8)) == minimal)
        #expect(TaskRecord(encoded: Array(full.encoded().utf8)) == full)
    }

    /// An id takes up to eight characters from each 64-bit draw, one per byte (low byte first,
    /// the byte modulo 36), and skips bytes of 252 and up, which would favour the alphabet's first four.
    @Test func idsTakeEveryByteUnder252AndSkipTheRest() {
        var generator = ScriptedWords([
            0x0302_0100_FFFE_FDFC,  // 252…255 skipped, then a b c d
            0x0B0A_0908_0706_0504, 0x1312_1110_0F0E_0D0C,  // e…l, m…t
            0x0000_0000_2CFB_1514,  // u v, 251 → 9, 44 → i; the rest unused
        ])
        #expect(TaskID.random(using: &generator).text == "tsk_abcdefghijklmnopqrstuv9i")
        #expect(generator.drawn == 4)
    }

    /// A record with a result and binary bodies survives encoding; garbage and broken histories do not decode.
    @Test func recordsRoundTripAndRefuseGarbage() {
        var record = TaskRecord(
            id: TaskID.random(), partner: "acme", version: "v2", route: "price",
            lifecycle: TaskLifecycle(acceptedAt: 1_000, instance: "gw-a", requestID: "req-1"), traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        )
        _ = record.lifecycle.start(at: 2_000, instance: "gw-b")
        _ = record.lifecycle.finish(succeeded: true, at: 3_000, instance: "gw-b")
        record.result = TaskResult(status: 200, headers: [.init("Content-Type", "application/octet-stream")], body: Data([0, 255, 10, 13]))
        #expect(TaskRecord(encoded: Array(record.encoded().utf8)) == record)
        let request = TaskRequest(method: "POST", upstream: "pricing", pathAndQuery: "/price?q=1", headers: [.init("X-A", "1"), .init("X-A", "2")], body: Data([1, 2]))
        #expect(TaskRequest(encoded: Array(request.encoded().utf8)) == request)
        #expect(TaskRecord(encoded: Array("not json".utf8)) == nil)
        let emptyHistory = record.encoded().replacingOccurrences(of: #""history":\[.*\]\},"partner""#, with: #""history":[]},"partner""#, options: .regularExpression)
        #expect(emptyHistory != record.encoded())
        #expect(TaskRecord(encoded: Array(emptyHistory.utf8)) == nil)
        let skippedVersion = record.encoded().replacingOccurrences(of: #""version":2"#, with: #""version":5"#)
        #expect(TaskRecord(encoded: Array(skippedVersion.utf8)) == nil)
    }
}

struct TaskDocumentTests {
    private func finished(contentType: String, body: Data) -> TaskRecord {
        var record = TaskRecord(
            id: TaskID("tsk_0123456789abcdefghijklmn")!, partner: "acme", version: "v2", route: "price",
            lifecycle: TaskLifecycle(acceptedAt: 1_764_633_600_000, instance: "gw-a", requestID: "req-1")
        )
        _ = record.lifecycle.start(at: 1_764_633_601_000, instance: "gw-b")
        _ = record.lifecycle.finish(succeeded: true, at: 1_764_633_602_500, instance: "gw-b")
        record.result = TaskResult(status: 200, headers: [.init("Content-Type", contentType), .init("X-A", "1"), .init("x-a", "2")], body: body)
        return record
    }

    private func object(_ data: Data) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// The 202 body names the task, its status URL under the version, and when it was created.
    @Test func acceptedBodyHasTheSpecFields() throws {
        let record = TaskRecord(
            id: TaskID("tsk_0123456789abcdefghijklmn")!, partner: "acme", version: "v2", route: "price",
            lifecycle: TaskLifecycle(acceptedAt: 1_764_633_600_000, instance: "gw-a", requestID: "req-1")
        )
        let body = try object(TaskDocument.accepted(record))
        #expect(body["task_id"] as? String == "tsk_0123456789abcdefghijklmn")
        #expect(body["status"] as? String == "queued")
        #expect(body["status_url"] as? String == "/v2/tasks/tsk_0123456789abcdefghijklmn")
        #expect(body["created_at"] as? String == "2025-12-02T00:00:00.000Z")
    }

    /// A JSON result is embedded as JSON, anything else as base64; repeated headers are joined; the history is listed.
    @Test func statusEmbedsJSONOrBase64() throws {
        let json = try object(TaskDocument.status(finished(contentType: "application/json; charset=utf-8", body: Data(#"{"price":12.5}"#.utf8))))
        let result = try #require(json["result"] as? [String: Any])
        #expect((result["body"] as? [String: Any])?["price"] as? Double == 12.5)
        #expect((result["headers"] as? [String: String])?["x-a"] == "1, 2")
        #expect(json["updated_at"] as? String == "2025-12-02T00:00:02.500Z")
        #expect((json["history"] as? [[String: Any]])?.map { $0["status"] as? String } == ["queued", "running", "succeeded"])
        #expect(json["attempts"] as? Int == 1)
        let binary = try object(TaskDocument.status(finished(contentType: "application/pdf", body: Data([0, 1, 2]))))
        #expect((binary["result"] as? [String: Any])?["body_base64"] as? String == "AAEC")
        let broken = try object(TaskDocument.status(finished(contentType: "application/json", body: Data("{not json".utf8))))
        #expect((broken["result"] as? [String: Any])?["body_base64"] as? String == Data("{not json".utf8).base64EncodedString())
    }

    /// A UTF-8 JSON body is embedded as the upstream wrote it (numbers and key order kept); one
    /// with a byte-order mark or in UTF-16 is re-written, so the document stays valid JSON.
    @Test func statusEmbedsTheUpstreamsJSONAsWritten() throws {
        let written = #"{ "price": 12.50, "big": 12345678901234567890, "a": [1] }"#
        let document = String(decoding: TaskDocument.status(finished(contentType: "application/json", body: Data(written.utf8))), as: UTF8.self)
        #expect(document.contains(#""body":"# + written + ","))
        for body in [Data([0xEF, 0xBB, 0xBF]) + Data(#"{"price":1}"#.utf8), #"{"price":1}"#.data(using: .utf16)!] {
            let json = try object(TaskDocument.status(finished(contentType: "application/json", body: body)))
            #expect((json["result"] as? [String: Any])?["body"] as? [String: Int] == ["price": 1])
        }
    }

    /// A webhook event has the type of the final status, a timestamp and the status document as data; its id is stable.
    @Test func eventCarriesTheStatus() throws {
        let record = finished(contentType: "application/json", body: Data("{}".utf8))
        let message = WebhookMessage(finished: record, at: 1_764_633_603_000)
        #expect(message.id == "msg_0123456789abcdefghijklmn")
        #expect(message.type == "task.succeeded")
        let event = try object(message.payload)
        #expect(event["type"] as? String == "task.succeeded")
        #expect(event["timestamp"] as? String == "2025-12-02T00:00:03.000Z")
        #expect((event["data"] as? [String: Any])?["task_id"] as? String == "tsk_0123456789abcdefghijklmn")
        #expect(WebhookMessage(encoded: Array(message.encoded().utf8)) == message)
    }

    /// Each document (written by hand) has exactly its members, for partners and for ops, and
    /// carries hostile text through intact.
    @Test func documentsHaveTheirMembersAndKeepHostileText() throws {
        let hostile = "q\"b\\s/ \u{0}\u{1}\n\t\u{1F}\u{7F} é ✓ 🚚 </script> \\u0041"
        var record = TaskRecord(
            id: TaskID("tsk_0123456789abcdefghijklmn")!, partner: hostile, version: "v2", route: hostile,
            lifecycle: TaskLifecycle(acceptedAt: 1_764_633_600_000, instance: hostile, requestID: hostile, note: hostile), upstream: hostile
        )
        _ = record.lifecycle.start(at: 1_764_633_601_000, instance: "gw-b")
        _ = record.lifecycle.finish(succeeded: false, at: 1_764_633_602_500, instance: "gw-b", note: hostile)
        record.failure = hostile
        record.result = TaskResult(status: 502, headers: [.init("Content-Type", "application/json"), .init("X-Odd", hostile)], body: Data(#"{"b":[1,"\u00e9"],"a":null}"#.utf8))
        let common: Set = ["attempts", "created_at", "error", "status", "status_url", "task_id", "updated_at", "upstream"]

        let status = try object(TaskDocument.status(record))
        #expect(Set(status.keys) == common.union(["history", "result"]))
        #expect(status["error"] as? String == hostile)
        #expect(status["upstream"] as? String == hostile)
        let history = try #require(status["history"] as? [[String: Any]])
        #expect(history.map { Set($0.keys) } == [["at", "instance", "note", "request_id", "status", "version"], ["at", "instance", "request_id", "status", "version"], ["at", "instance", "note", "request_id", "status", "version"]])
        #expect(history[0]["instance"] as? String == hostile && history[0]["request_id"] as? String == hostile && history[2]["note"] as? String == hostile)
        #expect(history.map { $0["version"] as? Int } == [1, 2, 3])
        let result = try #require(status["result"] as? [String: Any])
        #expect(Set(result.keys) == ["body", "headers", "status"])
        #expect((result["headers"] as? [String: String])?["x-odd"] == hostile)
        #expect((result["body"] as? [String: Any])?["b"] as? [AnyHashable] == [1, "é"])
        #expect(result["status"] as? Int == 502)

        let shown = try object(TaskDocument.operatorView(record))
        #expect(Set(shown.keys) == common.union(["history", "result", "partner", "route", "version"]))
        #expect(shown["partner"] as? String == hostile && shown["route"] as? String == hostile)
        let listed = try #require(try object(TaskDocument.list([record, record]))["tasks"] as? [[String: Any]])
        #expect(listed.count == 2 && listed.allSatisfy { Set($0.keys) == common.union(["partner", "route", "version"]) })

        var message = WebhookMessage(finished: record, at: 1_764_633_603_000)
        #expect(Set(try object(message.payload).keys) == ["data", "timestamp", "type"])
        message.lastError = hostile
        let dead = try #require(try object(TaskDocument.deadLetters([message]))["webhooks"] as? [[String: Any]])
        #expect(dead.count == 1)
        #expect(Set(dead[0].keys) == ["attempts", "created_at", "dead_at", "last_error", "partner", "task_id", "type", "webhook_id"])
        #expect(dead[0]["last_error"] as? String == hostile && dead[0]["dead_at"] is NSNull && dead[0]["partner"] as? String == hostile)
    }
}

/// A generator that returns the given words in order (then zeros), counting the draws.
private struct ScriptedWords: RandomNumberGenerator {
    private let words: [UInt64]
    private(set) var drawn = 0

    init(_ words: [UInt64]) { self.words = words }

    mutating func next() -> UInt64 {
        defer { drawn += 1 }
        return drawn < words.count ? words[drawn] : 0
    }
}
