import AsyncHTTPClient
import Foundation
import NIOCore
import SluiceCore
@testable import SluiceGateway
import TestSupport
import Testing

/// The shared response cache on the partner path (SPEC §9, issue 27), over real sockets with a
/// scripted upstream, on the embedded store and on Redis: hits after a miss, partner scope,
/// Vary, what is never stored, conditional requests, revalidation, stale-while-revalidate,
/// stale-if-error, coalesced misses over two instances and reload invalidation.
@Suite(.serialized)
struct ResponseCacheTests {
    private static let routes = [
        "{ id: catalog, versions: [v2], method: GET, path: \"/catalog/{id}\", upstream: main, cache: { ttl: 30s, vary: [Accept-Language] } }",
        "{ id: public, versions: [v2], method: GET, path: \"/public/{id}\", upstream: main, cache: { ttl: 30s, scope: shared } }",
        "{ id: stale, versions: [v2], method: GET, path: \"/stale/{id}\", upstream: main, cache: { ttl: 30s, stale_while_revalidate: 10s, stale_if_error: 5m } }",
        "{ id: stale-timeout, versions: [v2], method: GET, path: \"/stale-timeout/{id}\", upstream: main, request_timeout: 300ms, cache: { ttl: 30s, stale_while_revalidate: 10s, stale_if_error: 5m } }",
        "{ id: small, versions: [v2], method: GET, path: \"/small/{id}\", upstream: main, cache: { ttl: 30s, max_body: 10B } }",
    ]
    private static let etag = ("ETag", "\"v1\"")

    /// One gateway (or two sharing a Redis database) in front of `recorder`, with the cached routes.
    private func withGateways(
        _ count: Int = 1, onRedis: Bool, clock: ManualClock? = nil, _ recorder: RecordingUpstream, settings: String = "",
        _ body: ([GatewayHarness]) async throws -> Void
    ) async throws {
        try await SluiceGatewayTests.withGateways(count, onRedis: onRedis, clock: clock, in: recorder, settings: settings, routes: Self.routes, body)
    }

    private func get(_ gateway: GatewayHarness, _ path: String, key: String = TestKeys.acme, headers: [(String, String)] = []) async throws -> TestResponse {
        try await gateway.partner(.GET, path, key: key, headers: headers)
    }

    /// A miss is stored and the next request is a hit with `Age` and `Cache-Status`: one
    /// upstream call; a HEAD is answered from the GET's entry; the results are counted.
    @Test(arguments: [false, true])
    func hitAfterMissCallsTheUpstreamOnce(onRedis: Bool) async throws {
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{\"part\":\"A-1\"}", headers: [("Content-Type", "application/json"), Self.etag])
        try await withGateways(onRedis: onRedis, recorder) { gateways in
            let gateway = gateways[0]
            let miss = try await get(gateway, "/v2/catalog/1")
            #expect(miss.status == 200 && miss.text == "{\"part\":\"A-1\"}")
            #expect(miss.header("Cache-Status") == "sluice; fwd=miss; fwd-status=200; stored")
            try await eventually("the entry is stored") { try await get(gateway, "/v2/catalog/1").header("Cache-Status")?.hasPrefix("sluice; hit") == true }
            let hit = try await get(gateway, "/v2/catalog/1")
            #expect(hit.status == 200 && hit.text == "{\"part\":\"A-1\"}")
            #expect(hit.header("Content-Type") == "application/json" && hit.header("ETag") == "\"v1\"")
            #expect(hit.header("Age") != nil && hit.header("X-Request-Id") != nil && hit.header("RateLimit") != nil)
            #expect(hit.header("Cache-Status")?.hasPrefix("sluice; hit; ttl=") == true)
            let head = try await gateway.partner(.HEAD, "/v2/catalog/1")
            #expect(head.status == 200 && head.body.readableBytes == 0 && head.header("Cache-Status")?.hasPrefix("sluice; hit") == true)
            #expect(recorder.requests.count == 1)
            // Counted when each request ends (just after its answer went out).
            // (A request that found the entry not stored yet waited for it: coalesced.)
            try await eventually("the hits are counted") {
                let hits = try await gateway.metric("sluice_cache_total{route=\"catalog\",result=\"hit\"}") ?? 0
                return try await hits + (gateway.metric("sluice_cache_total{route=\"catalog\",result=\"coalesced\"}") ?? 0) >= 3
            }
            #expect(try await gateway.metric("sluice_cache_total{route=\"catalog\",result=\"miss\"}") == 1)
            // Hits are requests: they count in usage, in the cached column.
            let today = UsageDay(epochMilliseconds: Int64(Date().timeIntervalSince1970 * 1_000)).text
            try await eventually("usage counts the hits") {
                let rows = try await gateway.send(.GET, gateway.admin + "/admin/usage?from=\(today)&to=\(today)&partner=acme", key: TestKeys.viewerToken)
                let row = (try JSONSerialization.jsonObject(with: Data(rows.body.readableBytesView)) as? [[String: Any]])?.first { $0["route"] as? String == "catalog" }
                guard let requests = row?["requests"] as? Int, let cached = row?["cached"] as? Int else { return false }
                return cached >= 3 && requests == cached + 1
            }
        }
    }

    /// Partner A never gets partner B's entry; a `shared` route has one entry for both.
    @Test func partnersNeverShareEntriesUnlessTheRouteIsShared() async throws {
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{}")
        try await withGateways(onRedis: true, recorder) { gateways in
            let gateway = gateways[0]
            _ = try await get(gateway, "/v2/catalog/7")
            let other = try await get(gateway, "/v2/catalog/7", key: TestKeys.globex)
            #expect(other.header("Cache-Status")?.contains("fwd=miss") == true)
            #expect(recorder.requests.count == 2)
            _ = try await get(gateway, "/v2/public/7")
            let shared = try await get(gateway, "/v2/public/7", key: TestKeys.globex)
            #expect(shared.header("Cache-Status")?.hasPrefix("sluice; hit") == true)
            #expect(recorder.requests.count == 3)
        }
    }

    /// The route's `vary` headers and the upstream's `Vary` are part of what an entry answers;
    /// each variant of the upstream's `Vary` keeps its own entry, so alternating values all hit.
    @Test(arguments: [false, true])
    func varyHeadersSeparateEntries(onRedis: Bool) async throws {
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{\"tenant\":\"a\"}", headers: [("Vary", "X-Tenant")])
        try await withGateways(onRedis: onRedis, recorder) { gateways in
            let gateway = gateways[0]
            let tenantA = [("Accept-Language", "de"), ("X-Tenant", "a")]
            let tenantB = [("Accept-Language", "de"), ("X-Tenant", "b")]
            _ = try await get(gateway, "/v2/catalog/3", headers: tenantA)
            #expect(try await get(gateway, "/v2/catalog/3", headers: tenantA).header("Cache-Status")?.hasPrefix("sluice; hit") == true)
            let english = try await get(gateway, "/v2/catalog/3", headers: [("Accept-Language", "en"), ("X-Tenant", "a")])
            #expect(english.header("Cache-Status")?.contains("fwd=miss") == true, "the route's vary header")
            recorder.reply(200, body: "{\"tenant\":\"b\"}", headers: [("Vary", "X-Tenant")])
            let otherTenant = try await get(gateway, "/v2/catalog/3", headers: tenantB)
            #expect(otherTenant.header("Cache-Status") == "sluice; fwd=miss; fwd-status=200; stored", "the upstream's Vary")
            #expect(recorder.requests.count == 3)
            for (headers, tenant) in [(tenantA, "a"), (tenantB, "b"), (tenantA, "a"), (tenantB, "b")] {
                let hit = try await get(gateway, "/v2/catalog/3", headers: headers)
                #expect(hit.header("Cache-Status")?.hasPrefix("sluice; hit") == true && hit.text == "{\"tenant\":\"\(tenant)\"}", "variant \(tenant)")
            }
            #expect(recorder.requests.count == 3, "each variant keeps its entry")
        }
    }

    /// Across instances, a request waiting for another instance's fill of a URL whose answer
    /// varies on a header it sends otherwise does not wait out the fill lock (10 s): when the
    /// entry arrives for the other value, it fills its own variant at once.
    @Test func aWaitingRequestOfAnotherVariantFillsItsOwn() async throws {
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{}", headers: [("Vary", "X-Tenant")])
        recorder.hold()
        try await withGateways(2, onRedis: true, recorder) { gateways in
            let tenantA = [("Accept-Language", "de"), ("X-Tenant", "a")]
            let tenantB = [("Accept-Language", "de"), ("X-Tenant", "b")]
            async let first = get(gateways[0], "/v2/catalog/8", headers: tenantA)
            try await eventually("the first fill calls the upstream") { recorder.startedCount == 1 }
            async let second = get(gateways[1], "/v2/catalog/8", headers: tenantB)
            // The second request finds the first one's fill lock and waits for its entry (leading
            // its own instance's fill of the key meanwhile).
            try await eventually("the second request waits") { gateways[1].gateway.runtime.snapshots.load().caching.fills.keysFilling == 1 }
            #expect(recorder.startedCount == 1)
            recorder.release()
            #expect(try await first.status == 200)
            try await eventually(timeout: .seconds(5), "the second request fills its own variant, well before the lock's 10 s") { recorder.startedCount == 2 }
            #expect(try await second.header("Cache-Status") == "sluice; fwd=miss; fwd-status=200; stored")
            for (gateway, headers) in [(gateways[1], tenantA), (gateways[0], tenantB)] {
                try await eventually("both variants answer from the cache") {
                    try await get(gateway, "/v2/catalog/8", headers: headers).header("Cache-Status")?.hasPrefix("sluice; hit") == true
                }
            }
            #expect(recorder.startedCount == 2)
        }
    }

    /// `no-store`, `private`, `Set-Cookie`, a 5xx and a body over `max_body` are never stored;
    /// a request's `no-store` bypasses the cache.
    @Test func whatIsNeverStored() async throws {
        let recorder = RecordingUpstream()
        try await withGateways(onRedis: false, recorder) { gateways in
            let gateway = gateways[0]
            let cases: [(headers: [(String, String)], status: Int, path: String, detail: String)] = [
                ([("Cache-Control", "no-store")], 200, "/v2/catalog/10", "no-store"),
                ([("Cache-Control", "private, max-age=60")], 200, "/v2/catalog/11", "private"),
                ([("Set-Cookie", "session=1")], 200, "/v2/catalog/12", "set-cookie"),
                ([], 500, "/v2/catalog/13", "status"),
                ([], 200, "/v2/small/14", "too-large"),
            ]
            for example in cases {
                recorder.reply(example.status, body: "{\"a\":\"bcdefghijk\"}", headers: example.headers)
                let first = try await get(gateway, example.path)
                #expect(first.header("Cache-Status") == "sluice; fwd=miss; fwd-status=\(example.status); detail=\(example.detail)", "\(example.path)")
                let second = try await get(gateway, example.path)
                #expect(second.header("Cache-Status")?.contains("fwd=miss") == true, "\(example.path) is not stored")
            }
            #expect(recorder.requests.count == 10)
            recorder.reply(200, body: "{}")
            _ = try await get(gateway, "/v2/catalog/15")
            let bypass = try await get(gateway, "/v2/catalog/15", headers: [("Cache-Control", "no-store")])
            #expect(bypass.header("Cache-Status") == "sluice; fwd=bypass; fwd-status=200")
            #expect(recorder.requests.count == 12)
        }
    }

    /// A partner's conditional request is answered 304 from a fresh entry (the upstream is not
    /// asked); a stale entry is revalidated with its validators and a 304 refreshes it.
    @Test(arguments: [false, true])
    func conditionalRequestsAndRevalidation(onRedis: Bool) async throws {
        let clock = ManualClock(.present)
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{\"v\":1}", headers: [Self.etag])
        try await withGateways(onRedis: onRedis, clock: clock, recorder) { gateways in
            let gateway = gateways[0]
            _ = try await get(gateway, "/v2/catalog/20")
            let notModified = try await get(gateway, "/v2/catalog/20", headers: [("If-None-Match", "\"v1\"")])
            #expect(notModified.status == 304 && notModified.body.readableBytes == 0 && notModified.header("ETag") == "\"v1\"")
            #expect(recorder.requests.count == 1)

            clock.advance(31_000)
            recorder.reply(304, headers: [Self.etag])
            let revalidated = try await get(gateway, "/v2/catalog/20")
            #expect(revalidated.status == 200 && revalidated.text == "{\"v\":1}")
            #expect(revalidated.header("Cache-Status") == "sluice; fwd=stale; fwd-status=304; stored")
            #expect(recorder.requests.count == 2)
            #expect(recorder.requests.last?.header("if-none-match") == "\"v1\"")
            let fresh = try await get(gateway, "/v2/catalog/20")
            #expect(fresh.header("Cache-Status")?.hasPrefix("sluice; hit") == true, "the 304 made it fresh again")
            #expect(recorder.requests.count == 2)

            let forced = try await get(gateway, "/v2/catalog/20", headers: [("Cache-Control", "no-cache")])
            #expect(forced.status == 200 && recorder.requests.count == 3, "no-cache revalidates a fresh entry")
            try await eventually("both revalidations are counted") { try await gateway.metric("sluice_cache_total{route=\"catalog\",result=\"revalidated\"}") == 2 }
        }
    }

    /// Past its freshness, within `stale_while_revalidate`, an entry answers at once and one
    /// background call refreshes it; within `stale_if_error`, it answers when the upstream fails
    /// (a 5xx, a timeout). The held refresh's route has the default timeout (a starved machine
    /// may hold it past a short one, and the next stale answer would rightly refresh again); the
    /// timeout is met on a route of its own.
    @Test(arguments: [false, true])
    func staleEntriesAnswerWhileRevalidatingAndOnErrors(onRedis: Bool) async throws {
        let clock = ManualClock(.present)
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{\"v\":1}")
        try await withGateways(onRedis: onRedis, clock: clock, recorder) { gateways in
            let gateway = gateways[0]
            _ = try await get(gateway, "/v2/stale/1")
            _ = try await get(gateway, "/v2/stale-timeout/1")
            clock.advance(35_000)
            recorder.reply(200, body: "{\"v\":2}")
            recorder.hold()
            for _ in 0..<3 {
                let stale = try await get(gateway, "/v2/stale/1")
                #expect(stale.text == "{\"v\":1}")
                #expect(stale.header("Cache-Status") == "sluice; hit; ttl=-5; detail=stale-while-revalidate")
            }
            try await eventually("the refresh is sent") { recorder.startedCount == 3 }
            recorder.release()
            try await eventually("the refreshed entry answers") { try await get(gateway, "/v2/stale/1").text == "{\"v\":2}" }
            #expect(recorder.startedCount == 3, "one background refresh")

            clock.advance(60_000)
            recorder.reply(503, body: "{}")
            let onError = try await get(gateway, "/v2/stale/1")
            #expect(onError.status == 200 && onError.text == "{\"v\":2}")
            #expect(onError.header("Cache-Status")?.hasSuffix("detail=stale-if-error") == true)
            recorder.reply(200, body: "{}", after: .seconds(2))
            let onTimeout = try await get(gateway, "/v2/stale-timeout/1")
            #expect(onTimeout.status == 200 && onTimeout.text == "{\"v\":1}")
            #expect(onTimeout.header("Cache-Status")?.hasSuffix("detail=stale-if-error") == true)
            try await eventually("stale answers are counted") { (try await gateway.metric("sluice_cache_total{route=\"stale\",result=\"stale\"}") ?? 0) >= 4 }
            try await eventually("the answer on timeout is counted") { try await gateway.metric("sluice_cache_total{route=\"stale-timeout\",result=\"stale\"}") == 1 }
        }
    }

    /// With the upstream's breaker open (no call is made), a stale entry within
    /// `stale_if_error` answers.
    @Test func staleEntriesAnswerWhileTheBreakerIsOpen() async throws {
        let clock = ManualClock(.present)
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{\"v\":1}")
        let breaker = "circuit_breaker: { window: 4, min_calls: 2, failure_rate: 50%, open_for: 60s }"
        try await withGateways(onRedis: false, clock: clock, recorder, settings: breaker) { gateways in
            let gateway = gateways[0]
            _ = try await get(gateway, "/v2/stale/1")
            clock.advance(60_000)
            recorder.reply(503, body: "{}")
            for _ in 0..<2 { #expect(try await get(gateway, "/v2/stale/1").text == "{\"v\":1}") }
            try await eventually("the breaker opens") { try await gateway.metric("sluice_breaker_state{upstream=\"main\"}") == 1 }
            let calls = recorder.requests.count
            let whileOpen = try await get(gateway, "/v2/stale/1")
            #expect(whileOpen.status == 200 && whileOpen.text == "{\"v\":1}")
            #expect(whileOpen.header("Cache-Status")?.hasSuffix("detail=stale-if-error") == true)
            #expect(recorder.requests.count == calls, "no call while the breaker is open")
            let uncached = try await get(gateway, "/v2/catalog/1")
            #expect(uncached.status == 503, "a route without an entry gets the open breaker's 503")
        }
    }

    /// 50 concurrent misses for one key over two instances make one upstream call; every
    /// request gets the answer.
    @Test func concurrentMissesOverTwoInstancesMakeOneCall() async throws {
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{\"price\":12.5}", after: .milliseconds(500))
        try await withGateways(2, onRedis: true, recorder) { gateways in
            let answers = try await withThrowingTaskGroup(of: TestResponse.self) { group in
                for index in 0..<50 { group.addTask { try await get(gateways[index % 2], "/v2/catalog/99") } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(answers.allSatisfy { $0.status == 200 && $0.text == "{\"price\":12.5}" })
            #expect(recorder.requests.count == 1)
            var coalesced = 0.0
            for gateway in gateways { coalesced += try await gateway.metric("sluice_cache_total{route=\"catalog\",result=\"coalesced\"}") ?? 0 }
            #expect(coalesced >= 1)
        }
    }

    /// `DELETE /admin/cache` (operator) purges a route's entries, or one partner's; bad
    /// requests are problems; `sluice cache purge` does the same against the store (running
    /// gateways see it when their near copies' hold ends).
    @Test func purgeByAdminAndCommandLine() async throws {
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{}")
        try await withGateways(onRedis: true, recorder) { gateways in
            let gateway = gateways[0]
            let cached = { (key: String) in try await get(gateway, "/v2/catalog/8", key: key).header("Cache-Status")?.hasPrefix("sluice; hit") == true }
            for key in [TestKeys.acme, TestKeys.globex] { _ = try await get(gateway, "/v2/catalog/8", key: key) }
            let (acmeCached, globexCached) = (try await cached(TestKeys.acme), try await cached(TestKeys.globex))
            #expect(acmeCached && globexCached)

            let purge = { (query: String, token: String?) in try await gateway.send(.DELETE, gateway.admin + "/admin/cache" + query, key: token) }
            #expect(try await purge("?route=catalog&partner=acme", TestKeys.viewerToken).status == 403)
            let one = try await purge("?route=catalog&partner=acme", TestKeys.operatorToken)
            #expect(one.status == 200)
            #expect(try one.json()["purged"] as? Int == 1)
            let (acmeAfter, globexAfter) = (try await cached(TestKeys.acme), try await cached(TestKeys.globex))
            #expect(!acmeAfter && globexAfter)
            try expectProblem(try await purge("", TestKeys.operatorToken), 400, "invalid-request", path: "/admin/cache")
            try expectProblem(try await purge("?route=nope", TestKeys.operatorToken), 404, "not-found", path: "/admin/cache")
            try expectProblem(try await purge("?route=get-order", TestKeys.operatorToken), 404, "not-found", path: "/admin/cache")
            try expectProblem(
                try await purge("?route=catalog&partner=nobody", TestKeys.operatorToken), 404, "not-found", path: "/admin/cache"
            )

            let cli = try await SluiceProcess.run(["cache", "purge", "--route", "catalog", "--policies", gateway.policies.directory.path])
            #expect(cli.code == 0, "\(cli.stderr)")
            #expect(cli.stdout.contains("purged 2 entries of route 'catalog'"))
            // The gateway's near copies of the entries answer for up to a second more.
            try await eventually("the gateway stops answering from the purged entries") { try await cached(TestKeys.globex) == false }
            let unknown = try await SluiceProcess.run(["cache", "purge", "--route", "nope", "--policies", gateway.policies.directory.path])
            #expect(unknown.code == 1 && unknown.stderr.contains("no route has the id 'nope'"))
        }
    }

    /// A reload that changes a route's `cache:` block invalidates its entries.
    @Test func reloadChangingTheCacheBlockInvalidates() async throws {
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{}")
        try await withGateways(onRedis: false, recorder) { gateways in
            let gateway = gateways[0]
            _ = try await get(gateway, "/v2/catalog/5")
            #expect(try await get(gateway, "/v2/catalog/5").header("Cache-Status")?.hasPrefix("sluice; hit") == true)
            let routes = gateway.policies.files["routes.yaml"]!.replacingOccurrences(of: "cache: { ttl: 30s, vary: [Accept-Language] }", with: "cache: { ttl: 60s, vary: [Accept-Language] }")
            try gateway.policies.rewrite("routes.yaml", routes)
            try await eventually("the edited route misses") { try await get(gateway, "/v2/catalog/5").header("Cache-Status")?.contains("fwd=miss") == true }
            #expect(recorder.requests.count == 2)
        }
    }
}
