import AsyncHTTPClient
import Foundation
import NIOCore
@testable import SluiceStore
import SluiceCore
import TestSupport
import Testing

/// `Idempotency-Key` on the partner path (SPEC §3, issue 11), over real sockets: replay, 409,
/// 422, the 400s, partner scoping, what is not recorded, large responses, Redis trouble.
@Suite(.serialized)
struct IdempotencyTests {
    /// Extra routes: a POST that needs a key, one that fails with any status, a slow one with a short timeout.
    private static func addRoutes(_ policies: inout TestPolicies) {
        policies.files["routes.yaml"]! += """
              - { id: price, versions: [v2], method: POST, path: /price-calculations, upstream: main, upstream_path: /price, idempotency: required }
              - { id: fail, versions: [v2], method: POST, path: "/fail/{code}", upstream: main, upstream_path: "/status/{code}" }
              - { id: slow-order, versions: [v2], method: POST, path: /slow-orders, upstream: main, upstream_path: /slow, request_timeout: 1s }
              - { id: export, versions: [v2], method: POST, path: /exports, upstream: main, upstream_path: /bytes }

            """
    }

    private func post(
        _ gateway: GatewayHarness, _ path: String, key: String?, body: String = "{\"part\":\"A-1\",\"qty\":5}",
        partner: String = TestKeys.acme, client: HTTPClient? = nil
    ) async throws -> TestResponse {
        try await gateway.partner(
            .POST, path, key: partner, headers: key.map { [("Idempotency-Key", $0)] } ?? [], body: .bytes(ByteBuffer(string: body)),
            client: client
        )
    }

    /// The same key, method, path, query and body replays the first response — status, headers and
    /// body byte for byte, with `Idempotent-Replayed: true` — over HTTP/1.1 and HTTP/2; the
    /// upstream saw the key unchanged; metrics and the access log say what happened.
    @Test(arguments: [false, true])
    func retryReplaysTheFirstResponse(overHTTP2: Bool) async throws {
        try await GatewayHarness.with { gateway in
            let client = overHTTP2 ? gateway.http2 : gateway.http1
            let first = try await post(gateway, "/v2/orders?source=erp", key: "\"order-7\"", client: client)
            #expect(first.status == 200 && first.header("Idempotent-Replayed") == nil)
            let echoed = try first.json()
            #expect((echoed["headers"] as? [String: String])?["idempotency-key"] == "\"order-7\"")
            let replay = try await post(gateway, "/v2/orders?source=erp", key: "\"order-7\"", client: client)
            #expect(replay.status == 200)
            #expect(replay.header("Idempotent-Replayed") == "true")
            #expect(Array(replay.body.readableBytesView) == Array(first.body.readableBytesView))
            #expect(replay.header("Content-Type") == first.header("Content-Type"))
            #expect(replay.header("Content-Length") == String(first.body.readableBytes))
            #expect(replay.header("X-Request-Id") != first.header("X-Request-Id"))
            #expect(replay.header("RateLimit") != nil)
            #expect(try await gateway.metric("sluice_idempotency_total{result=\"new\"}") == 1)
            #expect(try await gateway.metric("sluice_idempotency_total{result=\"replayed\"}") == 1)
            let lines = try gateway.logLines().filter { $0["message"] as? String == "request" && $0["route"] as? String == "create-order" }
            #expect(lines.compactMap { $0["idempotency"] as? String } == ["new", "replayed"])
        }
    }

    /// Two instances sharing Redis: a response recorded by one is replayed by the other, identical.
    @Test func otherInstanceReplays() async throws {
        let url = try await RedisServer.sharedURL()
        let keyName = "shared-\(UUID().uuidString)"
        let configure: (inout TestPolicies) -> Void = { $0.useRedis(url, timeout: "2s") }
        try await GatewayHarness.with(configure) { first in
            try await GatewayHarness.with(configure) { second in
                let original = try await post(first, "/v2/orders", key: keyName)
                // The record lands within one store round trip after the response; a retry in
                // that instant would get 409 (README), so the replay waits for it.
                let client = try RedisClient(url: try RedisURL.parse(url).get(), tlsCA: nil, timeout: .seconds(2), group: .singletonMultiThreadedEventLoopGroup)
                let stored = RedisStore(client: client).idempotencyKey("acme", keyName)
                do {
                    try await eventually("the response is recorded") {
                        if case .string(let value) = try await client.send(["GET", stored]) { return value.starts(with: Array("SIR1".utf8)) }
                        return false
                    }
                } catch {
                    await client.shutdown()
                    throw error
                }
                await client.shutdown()
                let replay = try await post(second, "/v2/orders", key: keyName, client: second.http2)
                #expect(original.status == 200)
                #expect(replay.status == 200 && replay.header("Idempotent-Replayed") == "true")
                #expect(replay.text == original.text)
                #expect(replay.header("Content-Type") == original.header("Content-Type"))
            }
        }
    }

    /// Fifty keyed requests at once on one HTTP/2 connection (one event loop) each run once, and
    /// fifty retries at once each replay their own response, while their claims and records share
    /// Redis calls with each other and with the partner's admission calls.
    @Test func concurrentKeyedRequestsShareRedisCalls() async throws {
        let url = try await RedisServer.sharedURL()
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder, { $0.useRedis(url, timeout: "2s") }) { gateway in
            let run = "batch-\(UUID().uuidString)"
            let callsBefore = try await gateway.metric("sluice_store_calls_total") ?? 0
            for round in 0..<2 {
                let responses = try await withThrowingTaskGroup(of: (Int, TestResponse).self) { group in
                    for index in 0..<50 {
                        group.addTask {
                            (index, try await post(gateway, "/v2/orders?n=\(index)", key: "\(run)-\(index)", body: "{\"n\":\(index)}", client: gateway.http2))
                        }
                    }
                    return try await group.reduce(into: [Int: TestResponse]()) { $0[$1.0] = $1.1 }
                }
                #expect(responses.values.allSatisfy { $0.status == 200 })
                let replayed = responses.values.filter { $0.header("Idempotent-Replayed") == "true" }.count
                #expect(replayed == (round == 0 ? 0 : 50))
            }
            #expect(recorder.startedCount == 50)
            let calls = try await gateway.metric("sluice_store_calls_total") ?? 0
            // At most one call per admission, claim and record; how many share a call depends on
            // timing (about 10 calls alone on an idle machine), which loadtest/run measures.
            #expect(calls - callsBefore <= 250, "\(calls - callsBefore) Redis calls for 100 keyed requests")
        }
    }

    /// While the first request runs, a duplicate gets 409 with Retry-After and never reaches the upstream.
    @Test func duplicateWhileRunningIs409() async throws {
        let recorder = RecordingUpstream()
        recorder.hold()
        try await withRecordingUpstream(recorder) { gateway in
            async let first = post(gateway, "/v2/orders", key: "k-409")
            try await eventually("the first request waits at the upstream") { recorder.heldCount == 1 }
            let duplicate = try await post(gateway, "/v2/orders", key: "k-409")
            #expect(duplicate.status == 409)
            #expect(try duplicate.json()["type"] as? String == "urn:sluice:problem:idempotency-key-in-use")
            #expect(duplicate.header("Retry-After").flatMap(Int.init).map { (1...5).contains($0) } == true)
            recorder.release()
            #expect(try await first.status == 200)
            #expect(recorder.startedCount == 1)
        }
    }

    /// The key reused with another body, path or query is 422; the upstream is not called again.
    @Test func changedRequestIs422() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            #expect(try await post(gateway, "/v2/orders?a=1", key: "k-422").status == 200)
            for (path, body) in [("/v2/orders?a=1", "{\"part\":\"B-2\"}"), ("/v2/orders?a=2", "{\"part\":\"A-1\",\"qty\":5}"), ("/v2/orders", "{\"part\":\"A-1\",\"qty\":5}")] {
                let reused = try await post(gateway, path, key: "k-422", body: body)
                #expect(reused.status == 422, "\(path) \(body)")
                #expect(try reused.json()["type"] as? String == "urn:sluice:problem:idempotency-key-reused")
            }
            #expect(recorder.startedCount == 1)
            #expect(try await gateway.metric("sluice_idempotency_total{result=\"mismatch\"}") == 3)
        }
    }

    /// Malformed keys are 400 invalid-idempotency-key, a required one missing is 400
    /// missing-idempotency-key; neither reaches the upstream. A GET forwards its key untouched.
    @Test func badKeysAre400() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder, { Self.addRoutes(&$0) }) { gateway in
            for bad in [String(repeating: "k", count: 256), "\"unterminated", "\"\"", "\"bad \\x escape\""] {
                let response = try await post(gateway, "/v2/orders", key: bad)
                #expect(response.status == 400, "\(bad)")
                #expect(try response.json()["type"] as? String == "urn:sluice:problem:invalid-idempotency-key")
            }
            let twice = try await gateway.partner(
                .POST, "/v2/orders", headers: [("Idempotency-Key", "a"), ("Idempotency-Key", "b")], body: .bytes(ByteBuffer(string: "{}"))
            )
            #expect(twice.status == 400)
            let missing = try await post(gateway, "/v2/price-calculations", key: nil)
            #expect(missing.status == 400)
            #expect(try missing.json()["type"] as? String == "urn:sluice:problem:missing-idempotency-key")
            #expect(recorder.startedCount == 0)
            #expect(try await gateway.partner(.GET, "/v2/orders/1", headers: [("Idempotency-Key", "\"\"")]).status == 200)
        }
    }

    /// Two partners may use the same key: each request runs.
    @Test func keysAreScopedByPartner() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            #expect(try await post(gateway, "/v2/orders", key: "same").status == 200)
            let other = try await post(gateway, "/v2/orders", key: "same", partner: TestKeys.globex)
            #expect(other.status == 200 && other.header("Idempotent-Replayed") == nil)
            #expect(recorder.startedCount == 2)
        }
    }

    /// Upstream 5xx answers and timeouts release the key: the retry runs again and its success is kept.
    @Test func failuresAreNotRecorded() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder, { Self.addRoutes(&$0) }) { (gateway: GatewayHarness) async throws in
            recorder.reply(503)
            #expect(try await post(gateway, "/v2/orders", key: "k-5xx").status == 503)
            recorder.reply(200, body: "{\"order\":1}")
            #expect(try await post(gateway, "/v2/orders", key: "k-5xx").status == 200)
            #expect(try await post(gateway, "/v2/orders", key: "k-5xx").header("Idempotent-Replayed") == "true")
            #expect(recorder.startedCount == 2)

            recorder.reply(200, after: .seconds(3))
            #expect(try await post(gateway, "/v2/slow-orders", key: "k-timeout").status == 504)
            recorder.reply(201)
            #expect(try await post(gateway, "/v2/slow-orders", key: "k-timeout").status == 201)
            #expect(try await gateway.metric("sluice_idempotency_total{result=\"released\"}") == 2)
        }
    }

    /// A response body over 1 MiB streams to the first caller whole, but is not kept: a retry
    /// gets 409 idempotent-response-not-replayable with the original status.
    @Test func largeResponsesAreNotReplayed() async throws {
        try await GatewayHarness.with({ Self.addRoutes(&$0) }) { gateway in
            let size = (1 << 20) + 1
            let first = try await post(gateway, "/v2/exports?n=\(size)", key: "k-large")
            #expect(first.status == 200 && first.body.readableBytes == size)
            let retry = try await post(gateway, "/v2/exports?n=\(size)", key: "k-large")
            #expect(retry.status == 409)
            let problem = try retry.json()
            #expect(problem["type"] as? String == "urn:sluice:problem:idempotent-response-not-replayable")
            #expect(problem["original-status"] as? Int == 200)
        }
    }

    /// A claim left by a crashed gateway answers 409 while its lease runs; once its lease has
    /// run out the key runs again. (Claims carry their expiry, so the crashed gateway's claim is
    /// made with a clock of its own: first current, then one whose lease ended a minute ago —
    /// no test waits for a real lease.)
    @Test func crashedClaimExpires() async throws {
        let url = try await RedisServer.sharedURL()
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder, { $0.useRedis(url, timeout: "2s") }) { gateway in
            let key = "crashed-\(UUID().uuidString)"
            let client = try RedisClient(url: try RedisURL.parse(url).get(), tlsCA: nil, timeout: .seconds(2), group: .singletonMultiThreadedEventLoopGroup)
            let crashedClock = ManualClock(.present)
            let crashed = RedisStore(client: client, clock: crashedClock.epochClock)
            #expect(try await crashed.claim(partner: "acme", key: key, token: "crashed-gateway", lease: .seconds(60)) == .claimed)
            #expect(try await post(gateway, "/v2/orders", key: key).status == 409)
            #expect(recorder.startedCount == 0)

            _ = try await client.send(["DEL", crashed.idempotencyKey("acme", key)])
            crashedClock.advance(-120_000)
            #expect(try await crashed.claim(partner: "acme", key: key, token: "crashed-gateway", lease: .seconds(60)) == .claimed)
            await client.shutdown()
            #expect(try await post(gateway, "/v2/orders", key: key).status == 200)
            #expect(recorder.startedCount == 1)
        }
    }

    /// With Redis stopped, keyed requests answer 503 with Retry-After; requests without a key go on.
    @Test func redisDownRefusesKeyedRequestsOnly() async throws {
        let redis = try await RedisServer.start()
        // A store timeout a busy test machine meets (the default 50 ms is not a test's to rely on).
        try await GatewayHarness.with({ $0.useRedis(redis.url, onFailure: "local", timeout: "1s") }) { gateway in
            #expect(try await post(gateway, "/v2/orders", key: "before").status == 200)
            try await redis.stop()
            let keyed = try await post(gateway, "/v2/orders", key: "during")
            #expect(keyed.status == 503 && keyed.header("Retry-After") == "1")
            #expect(try keyed.json()["type"] as? String == "urn:sluice:problem:upstream-unavailable")
            #expect(try await post(gateway, "/v2/orders", key: nil).status == 200)
        }
    }

    /// A rate-limited retry is refused before the key is looked at: it costs no claim and is not recorded.
    @Test func rateLimitedRetryCostsNoClaim() async throws {
        let recorder = RecordingUpstream()
        let clock = ManualClock(.present)
        try await withRecordingUpstream(recorder, clock: clock, { $0.setPlan("{ rate: { per_second: 1, burst: 1 } }") }) { (gateway: GatewayHarness) async throws in
            #expect(try await post(gateway, "/v2/orders", key: "k-429").status == 200)
            #expect(try await post(gateway, "/v2/orders", key: "k-429").status == 429)
            clock.advance(1_000)
            #expect(try await post(gateway, "/v2/orders", key: "k-429").header("Idempotent-Replayed") == "true")
            #expect(recorder.startedCount == 1)
            #expect(try await gateway.metric("sluice_idempotency_total{result=\"new\"}") == 1)
        }
    }

    /// A claimed request whose response streams for longer than its claim's first lease (the
    /// route's 1 s timeout plus a 1 s margin here) keeps its key: the claim is renewed while
    /// the request runs, so a retry meanwhile is 409, not a second run — embedded store and Redis.
    @Test(arguments: [false, true])
    func claimIsRenewedWhileTheResponseStreams(onRedis: Bool) async throws {
        let redis = onRedis ? try await RedisServer.start() : nil
        let upstream = try await RawUpstream.start(.streaming(bytes: 64 << 20))
        try await GatewayHarness.with({ policies in
            policies.upstreams["main"] = "url: http://127.0.0.1:\(upstream.port)"
            policies.addRoutes("{ id: export-once, versions: [v2], method: POST, path: /exports, upstream: main, upstream_path: /bytes, request_timeout: 1s }")
            if let redis { policies.useRedis(redis.url, onFailure: "deny", timeout: "2s") }
        }, claimLeaseMargin: .seconds(1)) { gateway in
            let slow = try await SlowClient.connect(port: gateway.addresses.http!)
            try await slow.send("POST /v2/exports HTTP/1.1\r\nHost: x\r\nX-API-Key: \(TestKeys.acme)\r\nIdempotency-Key: export-7\r\nContent-Length: 0\r\n\r\n")
            try await slow.read(atLeast: 1 << 10)
            try await eventually(timeout: .seconds(30), "the response is held back by the slow partner") { upstream.isStalled }
            try await Task.sleep(for: .milliseconds(2_500))  // longer than the claim's first lease (2 s)
            let retry = try await gateway.partner(.POST, "/v2/exports", headers: [("Idempotency-Key", "export-7")])
            try expectProblem(retry, 409, "idempotency-key-in-use", path: "/v2/exports")
            await slow.close()
        }
        await upstream.stop()
        try await redis?.stop()
    }

}
