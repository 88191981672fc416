import Testing
@testable import SluiceCore

/// The shared cache's rules (SPEC §9, RFC 9111, RFC 5861, RFC 9211) as pure functions, one test
/// per rule, on a manual clock (epoch milliseconds).
struct CachePolicyTests {
    private let now: Int64 = 1_796_000_000_000
    private let route = RouteCache(ttl: .seconds(30), staleWhileRevalidate: .seconds(10), staleIfError: .seconds(300), maxBody: 1_000)

    private func storability(_ headers: [(name: String, value: String)], status: Int = 200, length: Int? = 10) -> Result<CachePolicy.Freshness, CachePolicy.NotStored> {
        CachePolicy.storability(status: status, headers: headers, bodyLength: length, route: route, now: now)
    }

    private func lifetime(_ headers: [(name: String, value: String)]) -> Int64? {
        try? storability(headers).get().lifetime
    }

    @Test func routeTTLAppliesWhenTheUpstreamSaysNothing() throws {
        #expect(try storability([]).get() == .init(lifetime: 30_000, staleWhileRevalidate: 10_000, staleIfError: 300_000))
    }

    @Test func sharedMaxAgeWinsOverMaxAgeWhichWinsOverExpires() {
        let expires = ("Expires", "Thu, 01 Jan 2026 00:10:00 GMT"), date = ("Date", "Thu, 01 Jan 2026 00:00:00 GMT")
        #expect(lifetime([("Cache-Control", "max-age=60, s-maxage=5"), expires, date]) == 5_000)
        #expect(lifetime([("Cache-Control", "max-age=60"), expires, date]) == 60_000)
        #expect(lifetime([expires, date]) == 600_000)
        #expect(lifetime([("Expires", "0"), date]) == 0, "an Expires that cannot be read is already expired")
        #expect(lifetime([("Cache-Control", "max-age=soon")]) == 0, "an invalid max-age is stale")
        #expect(lifetime([("cache-control", "public"), ("CACHE-CONTROL", "max-age=\"7\"")]) == 7_000, "every line, any case, quoted values")
    }

    @Test func answersMarkedNoStorePrivateOrWithCookiesAreNotStored() {
        #expect(storability([("Cache-Control", "no-store")]) == .failure(.noStore))
        #expect(storability([("Cache-Control", "max-age=60, private")]) == .failure(.privateAnswer))
        #expect(storability([("Set-Cookie", "session=1")]) == .failure(.setCookie))
    }

    @Test func onlyHeuristicallyCacheableStatusesAndWholeAnswersAreStored() {
        for status in [200, 203, 204, 301, 404, 410] { #expect((try? storability([], status: status).get()) != nil, "\(status)") }
        for status in [201, 206, 302, 304, 500, 501, 502, 503] { #expect(storability([], status: status) == .failure(.status), "\(status)") }
        #expect(storability([("Content-Range", "bytes 0-9/100")]) == .failure(.status), "a partial answer")
    }

    @Test func varyStarIsNotStoredAndVaryNamesAreNormalized() {
        #expect(storability([("Vary", "Accept, *")]) == .failure(.varyAll))
        #expect(CachePolicy.varyNames([("Vary", "Accept-Language, accept"), ("vary", " X-Tenant ")]) == ["accept", "accept-language", "x-tenant"])
    }

    @Test func answersOverMaxBodyAreNotStored() {
        #expect(storability([], length: 1_001) == .failure(.tooLarge))
        #expect((try? storability([], length: 1_000).get()) != nil)
        #expect((try? storability([], length: nil).get()) != nil, "a streamed answer is checked as it arrives")
    }

    @Test func noCacheAnswersAreStoredToBeRevalidatedAndMustRevalidateIsNeverServedStale() {
        let noCache = try? storability([("Cache-Control", "no-cache, max-age=60")]).get()
        #expect(noCache?.lifetime == 0)
        let strict = try? storability([("Cache-Control", "max-age=60, must-revalidate")]).get()
        #expect(strict == .init(lifetime: 60_000, staleWhileRevalidate: 0, staleIfError: 0))
        let own = try? storability([("Cache-Control", "max-age=1, stale-while-revalidate=2, stale-if-error=3")]).get()
        #expect(own == .init(lifetime: 1_000, staleWhileRevalidate: 2_000, staleIfError: 3_000), "the answer's own stale windows win")
    }

    @Test func requestDirectivesChooseTheMode() {
        #expect(CachePolicy.requestMode([]) == .normal(maxAge: nil))
        #expect(CachePolicy.requestMode([("Cache-Control", "no-store")]) == .bypass)
        #expect(CachePolicy.requestMode([("Cache-Control", "no-cache")]) == .revalidate)
        #expect(CachePolicy.requestMode([("Cache-Control", "max-age=0")]) == .revalidate)
        #expect(CachePolicy.requestMode([("Pragma", "no-cache")]) == .revalidate)
        #expect(CachePolicy.requestMode([("Pragma", "no-cache"), ("Cache-Control", "max-age=5")]) == .normal(maxAge: 5_000), "Cache-Control wins over Pragma")
    }

    @Test func anEntryIsFreshThenStaleWhileRevalidatingThenRevalidated() {
        let freshness = CachePolicy.Freshness(lifetime: 30_000, staleWhileRevalidate: 10_000, staleIfError: 300_000)
        let age = { (elapsed: Int64, initial: Int64) in CachePolicy.age(storedAt: now, initialAge: initial, now: now + elapsed) }
        #expect(CachePolicy.use(freshness, age: age(0, 0), request: .normal(maxAge: nil)) == .fresh(ttl: 30_000))
        #expect(CachePolicy.use(freshness, age: age(20_000, 5_000), request: .normal(maxAge: nil)) == .fresh(ttl: 5_000), "the upstream's Age counts")
        #expect(CachePolicy.use(freshness, age: age(35_000, 0), request: .normal(maxAge: nil)) == .staleWhileRevalidate)
        #expect(CachePolicy.use(freshness, age: age(45_000, 0), request: .normal(maxAge: nil)) == .revalidate(allowedOnError: true))
        #expect(CachePolicy.use(freshness, age: age(331_000, 0), request: .normal(maxAge: nil)) == .revalidate(allowedOnError: false))
        #expect(CachePolicy.use(freshness, age: age(-5_000, 0), request: .normal(maxAge: nil)) == .fresh(ttl: 30_000), "a clock step back is age 0")
    }

    @Test func requestNoCacheAndMaxAgeForceRevalidation() {
        let freshness = CachePolicy.Freshness(lifetime: 30_000, staleWhileRevalidate: 10_000, staleIfError: 0)
        #expect(CachePolicy.use(freshness, age: 1_000, request: .revalidate) == .revalidate(allowedOnError: true))
        #expect(CachePolicy.use(freshness, age: 6_000, request: .normal(maxAge: 5_000)) == .revalidate(allowedOnError: true))
        #expect(CachePolicy.use(freshness, age: 4_000, request: .normal(maxAge: 5_000)) == .fresh(ttl: 26_000))
        let withoutWindows = CachePolicy.Freshness(lifetime: 0, staleWhileRevalidate: 0, staleIfError: 0)
        #expect(CachePolicy.use(withoutWindows, age: 0, request: .normal(maxAge: nil)) == .revalidate(allowedOnError: true))
        #expect(CachePolicy.use(withoutWindows, age: 1, request: .normal(maxAge: nil)) == .revalidate(allowedOnError: false))
    }

    @Test func conditionalRequestsAreAnsweredNotModifiedByMatchingValidators() {
        let etag = "\"v7\"", modified = "Wed, 01 Apr 2026 10:00:00 GMT"
        #expect(CachePolicy.notModified(request: [("If-None-Match", "\"v6\", W/\"v7\"")], etag: etag, lastModified: nil))
        #expect(CachePolicy.notModified(request: [("If-None-Match", "*")], etag: etag, lastModified: nil))
        #expect(!CachePolicy.notModified(request: [("If-None-Match", "\"v6\"")], etag: etag, lastModified: modified))
        #expect(!CachePolicy.notModified(request: [("If-None-Match", "*")], etag: nil, lastModified: modified))
        #expect(
            !CachePolicy.notModified(request: [("If-None-Match", "\"v6\""), ("If-Modified-Since", modified)], etag: etag, lastModified: modified),
            "If-None-Match decides when sent"
        )
        #expect(CachePolicy.notModified(request: [("If-Modified-Since", "Thu, 02 Apr 2026 10:00:00 GMT")], etag: nil, lastModified: modified))
        #expect(!CachePolicy.notModified(request: [("If-Modified-Since", "Tue, 31 Mar 2026 10:00:00 GMT")], etag: nil, lastModified: modified))
        #expect(!CachePolicy.notModified(request: [("If-Modified-Since", "yesterday")], etag: nil, lastModified: modified))
        #expect(!CachePolicy.notModified(request: [], etag: etag, lastModified: modified))
    }

    @Test func httpDatesParseOnlyAsIMFFixdate() {
        #expect(HTTPDate.parse("Sun, 06 Nov 1994 08:49:37 GMT") == 784_111_777_000)
        #expect(HTTPDate.parse("Thu, 29 Feb 2024 23:59:59 GMT") == 1_709_251_199_000)
        for bad in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 06 Nov 1994 25:00:00 GMT", "", "0"] {
            #expect(HTTPDate.parse(bad) == nil, "\(bad)")
        }
        #expect(HTTPDate.parse(HTTPDate.format(.init(timeIntervalSince1970: 1_796_000_000))) == 1_796_000_000_000)
    }

    @Test func keysSeparatePartnersRoutesPathsAndVaryValues() {
        let base = CacheKey.make(route: "get-order", partner: "acme", pathAndQuery: "/v2/orders/1", vary: [])
        #expect(base.count == 64)
        // Fixed bytes (SHA-256 over length-prefixed parts): every gateway version finds the same entries.
        #expect(base == "b03ecec2594f326376aa8451bf5092ed5186b1957bb4c46822b68a0453084639")
        #expect(base == CacheKey.make(route: "get-order", partner: "acme", pathAndQuery: "/v2/orders/1", vary: []))
        let others = [
            CacheKey.make(route: "get-order", partner: "globex", pathAndQuery: "/v2/orders/1", vary: []),
            CacheKey.make(route: "get-order", partner: nil, pathAndQuery: "/v2/orders/1", vary: []),
            CacheKey.make(route: "list", partner: "acme", pathAndQuery: "/v2/orders/1", vary: []),
            CacheKey.make(route: "get-order", partner: "acme", pathAndQuery: "/v2/orders/1?x=1", vary: []),
            CacheKey.make(route: "get-order", partner: "acme", pathAndQuery: "/v2/orders/1", vary: [("accept-language", "de")]),
            CacheKey.make(route: "get-order", partner: "acme", pathAndQuery: "/v2/orders/1", vary: [("accept-language", nil)]),
            CacheKey.make(route: "get-order", partner: "acme", pathAndQuery: "/v2/orders/1", vary: [("accept-language", "")]),
            // A partner id shaped to run into the path must not meet another partner's key.
            CacheKey.make(route: "get-order", partner: "acme/v2/orders/1", pathAndQuery: "", vary: []),
        ]
        #expect(Set(others + [base]).count == others.count + 1)
        // The variants of an upstream `Vary`: apart from each other, from every plain key, and
        // from the variants of another key.
        let variants = [
            CacheKey.variant(of: base, names: ["x-tenant"], values: ["a"]),
            CacheKey.variant(of: base, names: ["x-tenant"], values: ["b"]),
            CacheKey.variant(of: base, names: ["x-tenant"], values: [nil]),
            CacheKey.variant(of: base, names: ["x-tenant"], values: [""]),
            CacheKey.variant(of: base, names: ["accept", "x-tenant"], values: ["a", nil]),
            CacheKey.variant(of: others[0], names: ["x-tenant"], values: ["a"]),
        ]
        #expect(variants[0] == CacheKey.variant(of: base, names: ["x-tenant"], values: ["a"]) && variants[0].count == 64)
        #expect(Set(variants + others + [base]).count == variants.count + others.count + 1)
    }

    @Test func cacheStatusFollowsRFC9211() {
        #expect(CacheStatus.hit(ttl: 12_345) == "sluice; hit; ttl=12")
        #expect(CacheStatus.hit(ttl: -1_500, detail: "stale-if-error") == "sluice; hit; ttl=-2; detail=stale-if-error")
        #expect(CacheStatus.forwarded(.miss, status: 200, stored: true) == "sluice; fwd=miss; fwd-status=200; stored")
        #expect(CacheStatus.forwarded(.miss, status: 200, stored: false, detail: "too-large") == "sluice; fwd=miss; fwd-status=200; detail=too-large")
        #expect(CacheStatus.forwarded(.bypass, status: nil, stored: false) == "sluice; fwd=bypass")
    }
}
