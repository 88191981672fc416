import Testing
@testable import SluiceCore

struct RoutingTests {
    private func template(_ text: String) -> PathTemplate { try! PathTemplate.parse(text).get() }

    private func table(_ routes: [(String, String)]) -> RouteTable<String> {
        RouteTable(routes.map { (method: $0.0, template: template($0.1), route: "\($0.0) \($0.1)") })
    }

    /// Literal segments win over parameters, and matching backtracks into a parameter when the literal branch dead-ends.
    @Test func literalBeatsParameterWithBacktracking() {
        let routes = table([("GET", "/orders/open"), ("GET", "/orders/{id}"), ("GET", "/orders/{id}/items")])
        guard case .found(let route, let parameters) = routes.match(method: "GET", path: "/orders/open") else {
            Issue.record("no match"); return
        }
        #expect(route == "GET /orders/open" && parameters.values.isEmpty)
        guard case .found(let second, let captured) = routes.match(method: "GET", path: "/orders/open/items") else {
            Issue.record("no match"); return
        }
        #expect(second == "GET /orders/{id}/items" && captured["id"] == "open")
    }

    /// Parameters are captured by the matched route's own names, still percent-encoded.
    @Test func parametersAreCapturedByName() {
        let routes = table([("GET", "/orders/{order_id}/lines/{line}")])
        guard case .found(_, let parameters) = routes.match(method: "GET", path: "/orders/A%2017/lines/3") else {
            Issue.record("no match"); return
        }
        #expect(parameters["order_id"] == "A%2017" && parameters["line"] == "3")
        #expect(template("/api/orders/{order_id}/l/{line}").render(parameters) == "/api/orders/A%2017/l/3")
    }

    /// A known path with another method gives 405 with every allowed method (HEAD rides on GET).
    @Test func wrongMethodListsAllowedMethods() {
        let routes = table([("GET", "/orders/{id}"), ("DELETE", "/orders/{id}")])
        guard case .methodNotAllowed(let allow) = routes.match(method: "POST", path: "/orders/7") else {
            Issue.record("expected 405"); return
        }
        #expect(allow == "DELETE, GET, HEAD")
        guard case .found(let route, _) = routes.match(method: "HEAD", path: "/orders/7") else {
            Issue.record("HEAD should use the GET route"); return
        }
        #expect(route == "GET /orders/{id}")
    }

    /// Unknown paths, empty segments, trailing slashes and a bare prefix do not match.
    @Test(arguments: ["/orders/7/x", "/orders//7", "/orders/7/", "/orders", "/", "/nothing"])
    func unmatchedPathsAreNotFound(_ path: String) {
        let routes = table([("GET", "/orders/{id}")])
        guard case .notFound = routes.match(method: "GET", path: Substring(path)) else {
            Issue.record("\(path) should not match"); return
        }
    }

    /// The root template matches "/" only.
    @Test func rootTemplate() {
        let routes = table([("GET", "/")])
        guard case .found = routes.match(method: "GET", path: "/") else { Issue.record("no match"); return }
    }

    /// Templates reject partial parameters, dot segments and repeated names.
    @Test(arguments: ["orders", "/orders/{id", "/orders/x{id}", "/a/../b", "/a//b", "/a/{id}/{id}", "/a/{1x}", "/a b"])
    func malformedTemplatesAreRejected(_ text: String) {
        #expect((try? PathTemplate.parse(text).get()) == nil)
    }
}

struct VersionResolutionTests {
    let rules = GatewayRules(try! PolicyFixtures.load())

    private func resolve(_ path: String, header: String? = nil, partner: String = "acme") -> VersionResolution {
        rules.resolveVersion(path: Substring(path), apiVersionHeader: header, partner: rules.partners[partner]!)
    }

    /// The path prefix wins over the header and the pinned default, and is stripped.
    @Test func pathPrefixWins() {
        guard case .resolved(let version, let path) = resolve("/v2/orders/1", header: "v1") else { Issue.record("unresolved"); return }
        #expect(version.version.name == "v2" && path == "/orders/1")
        guard case .resolved(_, let root) = resolve("/v2") else { Issue.record("unresolved"); return }
        #expect(root == "/")
    }

    /// Without a prefix the API-Version header decides, then the partner's first listed version.
    @Test func headerThenPinnedDefault() {
        guard case .resolved(let byHeader, let path) = resolve("/orders", header: "v2") else { Issue.record("unresolved"); return }
        #expect(byHeader.version.name == "v2" && path == "/orders")
        guard case .resolved(let pinned, _) = resolve("/orders") else { Issue.record("unresolved"); return }
        #expect(pinned.version.name == "v1")  // acme lists [v1, v2]
    }

    /// A partner without a versions list gets default_version.
    @Test func defaultVersionWhenPartnerPinsNothing() throws {
        var policy = try PolicyFixtures.load()
        policy.partners[1].versions = []
        let rules = GatewayRules(policy)
        guard case .resolved(let version, _) = rules.resolveVersion(path: "/orders", apiVersionHeader: nil, partner: rules.partners["globex"]!) else {
            Issue.record("unresolved"); return
        }
        #expect(version.version.name == "v2")
    }

    /// Unknown versions (prefix or header) are 404 material; versions the partner may not use are 403.
    @Test func unknownAndForbiddenVersions() {
        guard case .unknown("v7") = resolve("/v7/orders") else { Issue.record("expected unknown"); return }
        guard case .unknown("2027-01-01") = resolve("/orders", header: "2027-01-01") else { Issue.record("expected unknown"); return }
        guard case .forbidden(let version) = resolve("/v1/orders", partner: "globex") else { Issue.record("expected forbidden"); return }
        #expect(version.version.name == "v1")
    }

    /// A deprecated version carries precomputed Deprecation (RFC 9745) and Sunset (RFC 8594) values.
    @Test func deprecationHeaders() throws {
        let v1 = try #require(rules.versions["v1"])
        #expect(v1.deprecationHeader == "@1790812800")
        #expect(v1.sunsetHeader == "Wed, 30 Jun 2027 00:00:00 GMT")
        #expect(rules.versions["v2"]?.deprecationHeader == nil && rules.versions["v2"]?.sunsetHeader == nil)
    }

    /// Keys authenticate by hash; certificate subjects match in any attribute order.
    @Test func authenticationLookups() {
        #expect(rules.partner(forKey: "sluice_test_acme")?.id == "acme")
        #expect(rules.partner(forKey: "sluice_test_globex")?.id == "globex")
        #expect(rules.partner(forKey: "sluice_test_acm") == nil)
        #expect(rules.partner(forKey: "") == nil)
        #expect(rules.partner(forCertificateSubject: "O=ACME Manufacturing, CN=acme-erp")?.id == "acme")
        #expect(rules.partner(forCertificateSubject: "CN=acme-erp") == nil)
    }
}

struct PathSafetyTests {
    /// Segments that an upstream would read as another path are refused, percent-encoded or not:
    /// dot segments (also with a `;…` suffix, as Tomcat strips it), encoded `/`, `\` and NUL, a raw
    /// `\`, and broken escapes; ordinary paths, `...` and `;` parameters after a name pass.
    @Test(arguments: [
        ("/a/../b", PathSafety.Problem.dotSegment), ("/a/%2e%2E/b", .dotSegment), ("/a/./b", .dotSegment), ("/a/.%2e", .dotSegment),
        ("/..", .dotSegment), ("/a/%2E", .dotSegment), ("/orders/..;", .dotSegment), ("/orders/..;jsessionid=1/x", .dotSegment),
        ("/orders/.;x", .dotSegment), ("/orders/%2e%2e;", .dotSegment),
        ("/orders/..%2F..%2Finternal", .hiddenSeparator), ("/orders/%2e%2e%2f", .hiddenSeparator), ("/orders/a%2fb", .hiddenSeparator),
        ("/orders/%5C..", .hiddenSeparator), ("/orders/a\\b", .hiddenSeparator), ("/orders/a%00", .hiddenSeparator),
        ("/a/%2", .malformedEscape), ("/a/%zz", .malformedEscape), ("/a/%", .malformedEscape),
        ("orders", .notAbsolute), ("", .notAbsolute), ("*", .notAbsolute),
    ])
    func unsafePathsAreFound(_ example: (path: String, problem: PathSafety.Problem)) {
        #expect(PathSafety.check(Substring(example.path)) == example.problem)
    }

    @Test(arguments: ["/", "/a/", "/a/..b", "/a.b/c", "/a/.../b", "/orders/A%2017", "/orders/1;v=2", "/orders/;..", "/a//b", "/%41%7e"])
    func ordinaryPathsPass(_ path: String) {
        #expect(PathSafety.check(Substring(path)) == nil)
    }
}
