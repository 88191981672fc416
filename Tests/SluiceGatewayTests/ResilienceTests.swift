import AsyncHTTPClient
import Foundation
import NIOCore
import TestSupport
import Testing
@testable import SluiceGateway

/// Circuit breakers, bulkheads, retries and timeouts over real sockets (SPEC §3, §4.2): the
/// `flaky` upstream is a `RecordingUpstream` the test scripts; `main` stays the demo upstream.
@Suite(.serialized)
struct ResilienceTests {
    private static let flakyRoutes = [
        "{ id: flaky-get, versions: [v2], method: GET, path: /flaky, upstream: flaky, upstream_path: /work }",
        "{ id: flaky-post, versions: [v2], method: POST, path: /flaky, upstream: flaky, upstream_path: /work }",
    ]

    /// Runs a gateway whose `flaky` upstream is `recorder` with `settings`.
    private func withFlaky(
        _ recorder: RecordingUpstream, _ settings: String, clock: ManualClock? = nil, _ body: (GatewayHarness) async throws -> Void
    ) async throws {
        try await withRecordingUpstream(
            recorder, as: "flaky", settings: settings, clock: clock, { $0.addRoutes(Self.flakyRoutes[0], Self.flakyRoutes[1]) }, body
        )
    }

    private func logged(_ gateway: GatewayHarness, _ message: String, upstream: String) throws -> Int {
        try gateway.logLines().filter { $0["message"] as? String == message && $0["upstream"] as? String == upstream }.count
    }

    /// Four 500s in a window of four open the breaker; it then answers 503 with Retry-After at
    /// once without contacting the upstream, lets one probe through after open_for and closes
    /// again when it succeeds. The other upstream is unaffected throughout. The breaker runs on
    /// a manual clock, so a slow machine cannot let open_for pass early.
    @Test func breakerOpensAnswersAtOnceAndRecovers() async throws {
        let recorder = RecordingUpstream()
        recorder.reply(500)
        let clock = ManualClock(.present)
        let settings = "circuit_breaker: { window: 4, min_calls: 4, failure_rate: 50%, open_for: 500ms, half_open_probes: 1 }"
        try await withFlaky(recorder, settings, clock: clock) { gateway in
            for _ in 0..<4 {
                #expect(try await gateway.partner(.GET, "/v2/flaky").status == 500, "the upstream's own 500 is passed on")
            }
            #expect(recorder.startedCount == 4)
            #expect(try await gateway.metric(#"sluice_breaker_state{upstream="flaky"}"#) == 1)
            #expect(try await gateway.metric(#"sluice_breaker_transitions_total{upstream="flaky",to="open"}"#) == 1)
            #expect(try logged(gateway, "circuit breaker open", upstream: "flaky") == 1)

            // Were the upstream contacted now, the answer would take 5 s.
            recorder.reply(200, after: .seconds(5))
            let started = ContinuousClock.now
            let refused = try await gateway.partner(.GET, "/v2/flaky")
            #expect(ContinuousClock.now - started < .seconds(5))
            try expectProblem(refused, 503, "upstream-unavailable", path: "/v2/flaky")
            #expect(refused.header("Retry-After") == "1")
            #expect(recorder.startedCount == 4, "an open breaker sends nothing upstream")
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200, "the other upstream is unaffected")

            clock.advance(600)
            recorder.reply(200)
            try await eventually("the breaker lets a probe through and closes") {
                try await gateway.partner(.GET, "/v2/flaky").status == 200
            }
            #expect(recorder.startedCount == 5, "only the half-open probe reached the upstream")
            #expect(try await gateway.metric(#"sluice_breaker_state{upstream="flaky"}"#) == 0)
            #expect(try await gateway.metric(#"sluice_breaker_transitions_total{upstream="flaky",to="half-open"}"#) == 1)
            #expect(try await gateway.metric(#"sluice_breaker_transitions_total{upstream="flaky",to="closed"}"#) == 1)
            #expect(try logged(gateway, "circuit breaker closed", upstream: "flaky") == 1)
            #expect(try await gateway.metric(#"sluice_breaker_state{upstream="main"}"#) == 0)
        }
    }

    /// With max_in_flight 2, six concurrent slow calls give exactly two answers from the
    /// upstream and four 503s once queue_timeout passes; the other upstream answers meanwhile.
    @Test func bulkheadAdmitsOnlyMaxInFlight() async throws {
        let recorder = RecordingUpstream()
        recorder.hold()
        try await withFlaky(recorder, "max_in_flight: 2\nqueue_timeout: 50ms") { gateway in
            var responses: [TestResponse] = []
            try await withThrowingTaskGroup(of: TestResponse.self) { group in
                for _ in 0..<6 {
                    group.addTask { try await gateway.partner(.GET, "/v2/flaky", client: gateway.http2) }
                }
                // Two calls hold the bulkhead, so four answers come back without them.
                for _ in 0..<4 { responses.append(try await group.next()!) }
                #expect(recorder.heldCount <= 2)
                #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200, "a saturated upstream does not slow another")
                try await eventually("two calls reach the upstream") { recorder.heldCount == 2 }
                recorder.release()
                for try await response in group { responses.append(response) }
            }
            #expect(responses.filter { $0.status == 200 }.count == 2)
            let refused = responses.filter { $0.status == 503 }
            #expect(refused.count == 4)
            for response in refused {
                try expectProblem(response, 503, "upstream-unavailable", path: "/v2/flaky")
                #expect(response.header("Retry-After") == "1")
            }
            #expect(recorder.startedCount == 2)
        }
    }

    /// A POST without Idempotency-Key is sent once; with a key it is retried on the listed
    /// status, `attempts` times.
    @Test func onlyIdempotentRequestsAreRetried() async throws {
        let recorder = RecordingUpstream()
        recorder.reply(503)
        let settings = "retries: { attempts: 2, on: [503], backoff: 1ms..5ms, budget: 100% }\ncircuit_breaker: { window: 100, min_calls: 100 }"
        try await withFlaky(recorder, settings) { gateway in
            let plain = try await gateway.partner(.POST, "/v2/flaky", body: .bytes(ByteBuffer(string: "{}")))
            #expect(plain.status == 503)
            #expect(recorder.startedCount == 1, "a POST without Idempotency-Key is never retried")

            let keyed = try await gateway.partner(
                .POST, "/v2/flaky", headers: [("Idempotency-Key", "order-17")], body: .bytes(ByteBuffer(string: "{}"))
            )
            #expect(keyed.status == 503)
            #expect(recorder.startedCount == 4, "one try and two retries")
            #expect(recorder.requests.allSatisfy { $0.complete && $0.bytes == 2 }, "every try carries the whole body")
            #expect(try await gateway.metric(#"sluice_upstream_retries_total{upstream="flaky"}"#) == 2)
            #expect(try await gateway.metric(#"sluice_upstream_duration_seconds_count{upstream="flaky"}"#) == 4)
        }
    }

    /// `Expect: 100-continue` is answered before the body is read, whether the body is kept for
    /// retries (a keyed POST) or streamed (a POST without key), and the body arrives whole.
    @Test(arguments: [true, false]) func expectContinueIsAnswered(keyed: Bool) async throws {
        let recorder = RecordingUpstream()
        try await withFlaky(recorder, "retries: { attempts: 1, on: [503] }") { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            let key = keyed ? "Idempotency-Key: k-1\r\n" : ""
            try await connection.send(
                "POST /v2/flaky HTTP/1.1\r\nHost: x\r\nX-API-Key: \(TestKeys.acme)\r\n\(key)Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
            )
            #expect(try await connection.read(until: "\r\n\r\n").hasPrefix("HTTP/1.1 100 Continue\r\n"))
            try await connection.send("hello")
            #expect(try await connection.read(until: "\r\n\r\n").hasPrefix("HTTP/1.1 200 "))
            await connection.close()
            #expect(recorder.requests.map(\.bytes) == [5])
            #expect(recorder.requests.first?.complete == true)
        }
    }

    /// A kept (small, retryable) body that the client cuts off is never sent upstream at all.
    @Test func cutOffKeptBodyIsNeverSent() async throws {
        let recorder = RecordingUpstream()
        try await withFlaky(recorder, "retries: { attempts: 1 }") { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send(
                "POST /v2/flaky HTTP/1.1\r\nHost: x\r\nX-API-Key: \(TestKeys.acme)\r\nIdempotency-Key: k-2\r\nContent-Length: 10\r\n\r\nabc"
            )
            await connection.close()
            try await eventually("the request is logged as abandoned") {
                try gateway.logLines().contains { $0["path"] as? String == "/v2/flaky" && $0["client_gone"] as? Bool == true }
            }
            #expect(recorder.startedCount == 0)
        }
    }

    /// Retries stay within the budget: 20% of 20 requests (at least 3) is 4 retries, not 40.
    @Test func retriesStopAtTheBudget() async throws {
        let recorder = RecordingUpstream()
        recorder.reply(503)
        let settings = "retries: { attempts: 2, on: [503], backoff: 1ms..2ms, budget: 20% }\ncircuit_breaker: { window: 100, min_calls: 100 }"
        try await withFlaky(recorder, settings) { gateway in
            for _ in 0..<20 {
                let response = try await gateway.partner(.GET, "/v2/flaky")
                #expect(response.status == 503)
            }
            #expect(recorder.startedCount == 24)
            #expect(try await gateway.metric(#"sluice_upstream_retries_total{upstream="flaky"}"#) == 4)
        }
    }

    /// A refused connection is retried (connect-error) and then answered 502.
    @Test func connectErrorsAreRetriedThen502() async throws {
        try await GatewayHarness.with({ policies in
            policies.upstreams["dead"]! += "\nretries: { attempts: 2, backoff: 1ms..2ms }"
        }) { gateway in
            try expectProblem(try await gateway.partner(.GET, "/v2/dead"), 502, "bad-gateway", path: "/v2/dead")
            #expect(try await gateway.metric(#"sluice_upstream_retries_total{upstream="dead"}"#) == 2)
        }
    }

    /// An upstream that never completes the TCP handshake is 504 after connect_timeout.
    @Test func connectTimeoutIs504() async throws {
        let blackhole = try BlackholePort()
        try await GatewayHarness.with({ policies in
            policies.upstreams["dead"] = "url: http://127.0.0.1:\(blackhole.port)\nconnect_timeout: 200ms"
        }) { gateway in
            try expectProblem(try await gateway.partner(.GET, "/v2/dead"), 504, "upstream-timeout", path: "/v2/dead")
        }
        withExtendedLifetime(blackhole) {}
    }

    /// A body that stops flowing for body_timeout is cut: before the head went out (small body,
    /// read whole) that is a 504; after it, the partner's response is cut off and it is logged.
    @Test func stalledBodyIsCutOff() async throws {
        try await GatewayHarness.with({ policies in
            policies.upstreams["main"]! += "\nbody_timeout: 1s"
        }) { gateway in
            let small = try await gateway.partner(.GET, "/v2/bytes?n=1000&stall_after=500&stall_ms=5000")
            try expectProblem(small, 504, "upstream-timeout", path: "/v2/bytes")

            let large = try? await gateway.partner(.GET, "/v2/bytes?n=300000&stall_after=100000&stall_ms=5000")
            #expect(large == nil || large!.body.readableBytes < 300_000, "a cut-off response must not look complete")
            try await eventually("the stall is logged") {
                try logged(gateway, "upstream stalled mid-body; response cut off", upstream: "main") == 1
            }
            // Control: a pause shorter than body_timeout is fine.
            let paused = try await gateway.partner(.GET, "/v2/bytes?n=300000&stall_after=100000&stall_ms=20")
            #expect(paused.status == 200 && paused.body.readableBytes == 300_000)
        }
    }

    /// An upstream that dies mid-body cuts the partner's response off (over HTTP/1.1 and HTTP/2)
    /// rather than ending it as if complete.
    @Test(arguments: [false, true]) func upstreamDyingMidBodyIsNotForwardedAsComplete(overHTTP2: Bool) async throws {
        try await GatewayHarness.with { gateway in
            let client = overHTTP2 ? gateway.http2 : gateway.http1
            let cut = try? await gateway.partner(.GET, "/v2/bytes?n=300000&cut_after=100000", client: client)
            #expect(cut == nil || cut!.body.readableBytes < 300_000)
            let whole = try await gateway.partner(.GET, "/v2/bytes?n=300000", client: client)
            #expect(whole.body.readableBytes == 300_000)
        }
    }
}
