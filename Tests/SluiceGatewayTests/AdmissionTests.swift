import AsyncHTTPClient
import Foundation
import NIOCore
import NIOPosix
import SluiceCore
@testable import SluiceStore
import Testing
import TestSupport
@testable import SluiceGateway

@Suite(.serialized)
struct AdmissionTests {
    /// Admitted responses carry RateLimit-Policy and RateLimit; over the bucket the answer is 429
    /// rate-limited with Retry-After and violated-policies, and the refused requests never reach the upstream.
    @Test func bucketLimitsAndHeaders() async throws {
        try await GatewayHarness.with({ $0.setPlan("{ rate: { per_second: 0.5, burst: 2 }, quota: { requests: 100, per: day } }") }) { gateway in
            let first = try await gateway.partner(.GET, "/v2/orders/1")
            #expect(first.status == 200)
            #expect(first.header("RateLimit-Policy") == #""rate";q=2;w=4, "quota";q=100;w=86400"#)
            #expect(first.header("RateLimit") == #""rate";r=1;t=2"#)
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
            let refused = try await gateway.partner(.GET, "/v2/orders/1")
            #expect(refused.status == 429)
            #expect(refused.header("Retry-After") == "2")
            #expect(refused.header("RateLimit") == #""rate";r=0;t=4"#)
            let problem = try refused.json()
            #expect(problem["type"] as? String == "urn:sluice:problem:rate-limited")
            #expect(problem["violated-policies"] as? [String] == ["rate"])
            let metrics = try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text
            #expect(metrics.contains(#"sluice_ratelimit_rejections_total{partner="acme",reason="rate"} 1"#))
            #expect(metrics.contains(#"sluice_upstream_duration_seconds_count{upstream="main"} 2"#))
        }
    }

    /// A route's cost takes that many tokens.
    @Test func routeCostTakesTokens() async throws {
        try await GatewayHarness.with({ policies in
            policies.setPlan("{ rate: { per_second: 0.1, burst: 6 } }")
            policies.files["routes.yaml"] = policies.files["routes.yaml"]!.replacingOccurrences(
                of: "path: \"/orders/{id}\", upstream: main, upstream_path: \"/api/echo/{id}\" }",
                with: "path: \"/orders/{id}\", upstream: main, upstream_path: \"/api/echo/{id}\", cost: 4 }"
            )
        }) { gateway in
            #expect(try await gateway.partner(.GET, "/v2/orders/1").header("RateLimit") == #""rate";r=2;t=40"#)
            let refused = try await gateway.partner(.GET, "/v2/orders/1")
            #expect(refused.status == 429 && refused.header("Retry-After") == "20")
        }
    }

    /// Over the quota: 429 quota-exceeded with Retry-After until the window resets (UTC midnight);
    /// after midnight the partner is admitted again. The embedded store runs on a manual clock an
    /// hour before midnight, so the test does not depend on when it runs.
    @Test func quotaLimits() async throws {
        let clock = ManualClock(.present)
        let midnight = UTCCalendarOracle.window(.day, containing: clock.now).end
        clock.set(midnight - 3_600_000)
        try await GatewayHarness.with({ $0.setPlan("{ quota: { requests: 1, per: day } }") }, clock: clock) { gateway in
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
            let refused = try await gateway.partner(.GET, "/v2/orders/1")
            #expect(refused.status == 429)
            #expect(try refused.json()["type"] as? String == "urn:sluice:problem:quota-exceeded")
            #expect(try refused.json()["violated-policies"] as? [String] == ["quota"])
            #expect(refused.header("Retry-After") == "3600")
            clock.set(midnight)
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
        }
    }

    /// With concurrency 1 a second request in flight is refused; the slot is free again when the
    /// first ends normally, when the upstream fails, and when the client disconnects.
    @Test func concurrencySlotsAreReleased() async throws {
        try await GatewayHarness.with({ $0.setPlan("{ concurrency: 1 }") }) { gateway in
            // The refusal is the one that showed the slot held: a second request could come after
            // the holder's 400 ms on a starved machine.
            let (holder, refused) = try await holdTheOnlySlot(gateway, milliseconds: 400)
            #expect(refused.status == 429)
            #expect(try refused.json()["type"] as? String == "urn:sluice:problem:concurrency-limited")
            #expect(try refused.json()["violated-policies"] as? [String] == ["concurrency"])
            #expect(refused.header("Retry-After") == "1")
            #expect(try await holder.value.status == 200)
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)

            // An upstream failure gives the slot back too.
            #expect(try await gateway.partner(.GET, "/v2/dead").status == 502)
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)

            // A client that hangs up while its request waits for a slow upstream frees the slot at once.
            var connection: RawConnection
            while true {
                connection = try await RawConnection.open(port: gateway.addresses.http!)
                try await connection.send("GET /v2/long?ms=10000 HTTP/1.1\r\nHost: x\r\nX-API-Key: \(TestKeys.acme)\r\n\r\n")
                var held = false
                try await eventually("the hanging request got the slot or was refused") {
                    if connection.hasAnswered { return true }
                    held = try await gateway.partner(.GET, "/v2/orders/1").status == 429
                    return held
                }
                if held { break }
                await connection.close()
            }
            let hungUp = ContinuousClock.now
            await connection.close()
            try await eventually("the slot is free after the client left") { try await gateway.partner(.GET, "/v2/orders/1").status == 200 }
            #expect(ContinuousClock.now - hungUp < .seconds(5), "freed at the disconnect, not when the upstream answered (10 s)")
            try await eventually("the abandoned request is logged") {
                try gateway.logLines().contains { $0["path"] as? String == "/v2/long" && $0["client_gone"] as? Bool == true && $0["status"] as? Int == 499 }
            }
        }
    }

    /// A partner that sends one `X-Request-Id` on every request still gets only `concurrency:`
    /// requests in flight: leases are the gateway's own tokens, not the partner's ids (embedded
    /// store and Redis alike).
    @Test(arguments: [false, true]) func sharedRequestIDsDoNotShareASlot(onRedis: Bool) async throws {
        let redis = onRedis ? try await RedisServer.start() : nil
        let recorder = RecordingUpstream()
        recorder.hold()
        try await withRecordingUpstream(recorder, { policies in
            policies.setPlan("{ concurrency: 2 }")
            if let redis { policies.useRedis(redis.url, onFailure: "deny", timeout: "2s") }
        }) { gateway in
            defer { recorder.release() }
            let answers = try await withThrowingTaskGroup(of: TestResponse.self) { group in
                for _ in 0..<8 {
                    group.addTask { try await gateway.partner(.GET, "/v2/orders/1", headers: [("X-Request-Id", "same-id-every-time")]) }
                }
                var answers: [TestResponse] = []
                // Six are refused while two are held at the upstream; then the two are let go.
                for try await answer in group {
                    answers.append(answer)
                    if answers.count == 6 { recorder.release() }
                }
                return answers
            }
            #expect(answers.filter { $0.status == 200 }.count == 2)
            let refused = answers.filter { $0.status == 429 }
            #expect(refused.count == 6)
            #expect(try refused.allSatisfy { try $0.json()["type"] as? String == "urn:sluice:problem:concurrency-limited" })
            #expect(recorder.startedCount == 2)
            // Both slots are free again (on Redis a release may wait for the next 20 ms flush).
            try await eventually("the slots are given back") {
                try await gateway.partner(.GET, "/v2/orders/1", headers: [("X-Request-Id", "same-id-every-time")]).status == 200
            }
        }
        try await redis?.stop()
    }

    /// Starts a slow request that holds the partner's only concurrency slot; returns it and the
    /// answer to another request refused for it (a holder that lost the race for the slot is
    /// started again).
    private func holdTheOnlySlot(_ gateway: GatewayHarness, milliseconds: Int) async throws -> (Task<TestResponse, any Error>, TestResponse) {
        while true {
            let finished = ByteCounter()
            let holder = Task {
                defer { finished.add(1) }
                return try await gateway.partner(.GET, "/v2/long?ms=\(milliseconds)")
            }
            var refused: TestResponse?
            try await eventually("the holder got the slot or was refused") {
                if finished.value > 0 { return true }
                let response = try await gateway.partner(.GET, "/v2/orders/1")
                if response.status == 429 { refused = response }
                return refused != nil
            }
            if let refused { return (holder, refused) }
        }
    }

    /// A slot held by a gateway that died (its lease never renewed nor released) frees itself at
    /// expiry. The dead gateway's lease is taken once this gateway is up, so its 3 s cannot run
    /// out during a slow start.
    @Test func leaseOfACrashedGatewayExpires() async throws {
        let redis = try await RedisServer.start()
        let client = try RedisClient(url: try RedisURL.parse(redis.url).get(), timeout: .seconds(2), group: MultiThreadedEventLoopGroup.singleton)
        let crashed = RedisStore(client: client)
        try await GatewayHarness.with({ policies in
            policies.setPlan("{ concurrency: 1 }")
            policies.useRedis(redis.url, onFailure: "deny", timeout: "2s")
        }) { gateway in
            let held = try await crashed.admit(
                partner: "acme", limits: AdmissionLimits(LimitSet(concurrency: 1), cost: 1), lease: "crashed-gateway-lease",
                leaseDuration: .seconds(3)
            )
            #expect(held.verdict == .admitted)
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 429)
            try await eventually("the dead gateway's lease expired") { try await gateway.partner(.GET, "/v2/orders/1").status == 200 }
        }
        await client.shutdown()
        try await redis.stop()
    }

    /// An admitted request costs at most one Redis round trip (requests that arrive while a call
    /// is under way are decided together), and lease releases ride along with later calls or go
    /// out at most once per 20 ms flush — counted by `sluice_store_calls_total`.
    @Test func concurrentRequestsShareRoundTrips() async throws {
        let redis = try await RedisServer.start()
        try await GatewayHarness.with({ policies in
            policies.setPlan("{ rate: { per_second: 1000, burst: 1000 }, quota: { requests: 100000, per: day }, concurrency: 100 }")
            policies.useRedis(redis.url, onFailure: "deny", timeout: "2s")
            // One task shard: the task and webhook polls make one call per shard each.
            policies.files["gateway.yaml"]! += "tasks: { shards: 1 }\n"
        }, usageFlushInterval: .seconds(3_600)) { gateway in
            func storeCalls() async throws -> Int {
                Int(try #require(try await gateway.metric("sluice_store_calls_total")))
            }
            // The start's own calls (connections, the task layout check) are over once the store is marked.
            try await eventually("the gateway has checked the task layout") {
                await SentinelSet.cli(port: redis.port, ["GET", "sluice:{t:layout}:shards"]).contains("1")
            }
            let before = try await storeCalls()
            let started = ContinuousClock.now
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<50 { group.addTask { try await gateway.partner(.GET, "/v2/orders/\(index)").status } }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(statuses == Array(repeating: 200, count: 50))
            let calls = try await storeCalls() - before
            let elapsed = ContinuousClock.now - started
            let flushes = Int(elapsed / .milliseconds(20)) + 1
            // The task and webhook pollers run meanwhile, each at most once per 250 ms.
            let polls = 2 * (Int(elapsed / .milliseconds(250)) + 1)
            #expect(calls >= 1 && calls <= 50 + flushes + polls, "\(calls) store calls for 50 requests, \(flushes) release flushes, \(polls) polls")
        }
        try await redis.stop()
    }

    /// Two gateways on one Redis admit no more than one bucket's worth together.
    @Test func twoGatewaysShareOneBucket() async throws {
        let redis = try await RedisServer.start()
        let configure: (inout TestPolicies) -> Void = { policies in
            policies.setPlan("{ rate: { per_second: 0.01, burst: 20 } }")
            policies.useRedis(redis.url, onFailure: "deny", timeout: "2s")
        }
        try await GatewayHarness.with(configure) { first in
            try await GatewayHarness.with(configure) { second in
                let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                    for index in 0..<60 {
                        let gateway = index.isMultiple(of: 2) ? first : second
                        group.addTask { try await gateway.partner(.GET, "/v2/orders/\(index)").status }
                    }
                    return try await group.reduce(into: [Int]()) { $0.append($1) }
                }
                #expect(statuses.filter { $0 == 200 }.count == 20)
                #expect(statuses.filter { $0 == 429 }.count == 40)
            }
        }
        try await redis.stop()
    }
}

@Suite(.serialized)
struct RedisTroubleTests {
    private func transitions(_ gateway: GatewayHarness) throws -> (down: Int, up: Int) {
        let messages = try gateway.logLines().compactMap { $0["message"] as? String }
        return (
            messages.filter { $0 == "rate-limit store is unreachable; on_redis_failure applies" }.count,
            messages.filter { $0 == "rate-limit store is reachable again; shared limits apply" }.count
        )
    }

    /// `local`: with Redis killed, each instance enforces its share (burst 8 / 2 instances = 4);
    /// readiness stays 200 but degraded; after a restart the shared limits apply again, without a restart of the gateway.
    @Test func localModeEnforcesPerInstanceShare() async throws {
        let redis = try await RedisServer.start()
        try await GatewayHarness.with({ policies in
            policies.setPlan("{ rate: { per_second: 0.01, burst: 8 } }")
            policies.useRedis(redis.url, onFailure: "local", instances: 2, timeout: "1s")
        }) { gateway in
            #expect(try await gateway.partner(.GET, "/v2/orders/1").header("RateLimit") == #""rate";r=7;t=100"#)
            try await redis.stop()
            var statuses: [Int] = []
            for _ in 0..<6 { statuses.append(try await gateway.partner(.GET, "/v2/orders/1").status) }
            #expect(statuses == [200, 200, 200, 200, 429, 429])
            // Empty: a token in 800 s at the instance's share of 0.01/s (less the seconds a
            // starved machine took since the bucket was last touched).
            let empty = try #require(try await gateway.partner(.GET, "/v2/orders/1").header("RateLimit"))
            #expect(empty.hasPrefix(#""rate";r=0;t="#) && (790...800).contains(Int(empty.dropFirst(#""rate";r=0;t="#.count)) ?? 0), "\(empty)")
            #expect(try await gateway.metric("sluice_ratelimit_fallback") == 1)
            let ready = try await gateway.send(.GET, gateway.admin + "/readyz", key: nil)
            #expect(ready.status == 200 && ready.text == #"{"status":"ready","degraded":true}"#)

            try await redis.restart()
            try await eventually("shared limits apply again (the restarted Redis starts with a full bucket)") {
                try await gateway.partner(.GET, "/v2/orders/1").header("RateLimit") == #""rate";r=7;t=100"#
            }
            #expect(try await gateway.metric("sluice_ratelimit_fallback") == 0)
            #expect(try await gateway.send(.GET, gateway.admin + "/readyz", key: nil).text == #"{"status":"ready"}"#)
            #expect(try transitions(gateway) == (1, 1))
            let metrics = try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text
            #expect(metrics.contains("sluice_store_errors_total ") && !metrics.contains("sluice_store_errors_total 0\n"))
        }
        try await redis.stop()
    }

    /// `allow`: with Redis down, requests are admitted (without RateLimit headers).
    @Test func allowModeAdmits() async throws {
        let redis = try await RedisServer.start()
        try await GatewayHarness.with({ policies in
            policies.setPlan("{ rate: { per_second: 0.01, burst: 1 } }")
            policies.useRedis(redis.url, onFailure: "allow", timeout: "1s")
        }) { gateway in
            // Ready does not wait for the store here (allow mode): until its connection is open,
            // requests are admitted without a RateLimit header and take no token.
            try await eventually("the shared bucket decides (a RateLimit header)") {
                try await gateway.partner(.GET, "/v2/orders/1").header("RateLimit") != nil
            }
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 429)
            try await redis.stop()
            for _ in 0..<3 {
                let response = try await gateway.partner(.GET, "/v2/orders/1")
                #expect(response.status == 200 && response.header("RateLimit") == nil)
            }
            try await redis.restart()
            try await eventually("the shared bucket decides again (RateLimit headers are back)") {
                try await gateway.partner(.GET, "/v2/orders/1").header("RateLimit") != nil
            }
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 429)
        }
        try await redis.stop()
    }

    /// `deny`: with Redis down, 503 with Retry-After, and readiness is 503.
    @Test func denyModeRefuses() async throws {
        let redis = try await RedisServer.start()
        try await GatewayHarness.with({ policies in
            policies.setPlan("{ rate: { per_second: 100, burst: 100 } }")
            policies.useRedis(redis.url, onFailure: "deny", timeout: "1s")
        }) { gateway in
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
            try await redis.stop()
            let refused = try await gateway.partner(.GET, "/v2/orders/1")
            #expect(refused.status == 503 && refused.header("Retry-After") == "1")
            #expect(try refused.json()["type"] as? String == "urn:sluice:problem:upstream-unavailable")
            let ready = try await gateway.send(.GET, gateway.admin + "/readyz", key: nil)
            #expect(ready.status == 503)
            try await redis.restart()
            try await eventually("requests are admitted again") { try await gateway.partner(.GET, "/v2/orders/1").status == 200 }
        }
        try await redis.stop()
    }

    /// A hung Redis (no answers at all) costs the first requests the store deadline (500 ms
    /// here); then the breaker sends requests straight to the fallback, so they no longer wait
    /// for Redis: of the next ten, only the breaker's probes (one per second it stays open) call
    /// the store and fail, whatever the machine's speed — counted, not timed. (Usage is flushed
    /// once an hour here: a flush every 100 ms would fail against the hung store too, and
    /// `sluice_store_errors_total` counts background calls with the requests'.)
    @Test func hungRedisDoesNotSlowEveryRequest() async throws {
        let redis = try await RedisServer.start()
        try await GatewayHarness.with({ policies in
            policies.setPlan("{ rate: { per_second: 100, burst: 100 } }")
            policies.useRedis(redis.url, onFailure: "local")
            policies.files["gateway.yaml"]! += "  timeout: 500ms\n"
        }, usageFlushInterval: .seconds(3_600)) { gateway in
            #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200)
            redis.pause()
            for _ in 0..<2 { #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200) }
            let failedBefore = try #require(try await gateway.metric("sluice_store_errors_total"))
            #expect(failedBefore >= 1, "the hung store was noticed")
            let started = ContinuousClock.now
            for _ in 0..<10 { #expect(try await gateway.partner(.GET, "/v2/orders/1").status == 200) }
            let probes = 1 + Int((ContinuousClock.now - started) / .seconds(1))
            let waited = Int(try #require(try await gateway.metric("sluice_store_errors_total")) - failedBefore)
            #expect(waited <= probes, "\(waited) of 10 requests waited for a hung store (at most \(probes) probes)")
            redis.resume()
            try await eventually("the store is used again") {
                let status = try await gateway.partner(.GET, "/v2/orders/1").status
                return try await gateway.metric("sluice_ratelimit_fallback") == 0 && status == 200
            }
        }
        try await redis.stop()
    }
}
