import Foundation
import Testing
@testable import SluiceCore

struct PolicyDecodingTests {
    /// The valid fixture decodes into exactly the values it spells out.
    @Test func validSetDecodesEveryValue() throws {
        let policy = try PolicyFixtures.load()
        #expect(policy.gateway.listen.https == ListenAddress(host: "127.0.0.1", port: 8443))
        #expect(policy.gateway.listen.http == nil)
        #expect(policy.gateway.listen.admin == ListenAddress(host: "127.0.0.1", port: 9090))
        #expect(policy.gateway.tls?.certificatePath == URL(fileURLWithPath: "certs/dev.crt").standardizedFileURL.path)
        #expect(policy.gateway.adminTokens.map(\.role) == [.operator, .viewer])
        #expect(policy.gateway.webhooks.schedule.first == .seconds(5))
        #expect(policy.gateway.webhooks.schedule.last == .seconds(86_400))

        let pricing = try #require(policy.upstreams["pricing"])
        #expect(pricing.targets[0].address.description == "http://127.0.0.1:9102/base")
        #expect(pricing.circuitBreaker.slowCall == .seconds(5))
        #expect(pricing.bodyTimeout == .seconds(120))
        #expect(pricing.retries.attempts == 2)
        #expect(pricing.retries.on == [.connectError, .status(502), .status(503), .status(504)])
        #expect(pricing.retries.backoffMin == .milliseconds(50) && pricing.retries.backoffMax == .seconds(1))
        #expect(pricing.retries.budget == 0.2)

        #expect(policy.routes.defaultVersion == "v2")
        let price = try #require(policy.routes.routes.first { $0.id == "price" })
        #expect(price.async == .always && price.cost == 5 && price.idempotency == .required)
        #expect(price.requestTimeout == .seconds(1_800))
        #expect(price.dedupe == .seconds(6 * 3_600))
        #expect(policy.routes.routes.allSatisfy { $0.id == "price" || $0.dedupe == nil })
        let getOrder = try #require(policy.routes.routes.first { $0.id == "get-order" })
        #expect(
            getOrder.cache
                == RouteCache(ttl: .seconds(30), scope: .partner, vary: ["accept-language"], staleWhileRevalidate: .seconds(10), staleIfError: .seconds(300), maxBody: 1 << 20)
        )
        #expect(policy.routes.routes.allSatisfy { $0.id == "get-order" || $0.cache == nil })
        #expect(getOrder.idempotency == nil)
        #expect(getOrder.slo == RouteSLO(targets: [(.p95, .milliseconds(300))]))
        #expect(price.slo == RouteSLO(targets: [(.p95, .seconds(600)), (.p99, .seconds(1_200))]))
        #expect(policy.routes.routes.allSatisfy { ["get-order", "price"].contains($0.id) || $0.slo == nil })
        #expect(policy.routes.routes.first { $0.id == "create-order" }?.idempotency == .optional)

        let acme = try #require(policy.partners.first { $0.id == "acme" })
        #expect(policy.limits(for: acme).rate == LimitSet.Rate(perSecond: 100, burst: 200))
        #expect(policy.limits(for: acme).quota == LimitSet.Quota(requests: 100_000, per: .day))
        #expect(acme.webhook?.secret == (try WebhookSecret("whsec_" + Data(Array(0..<32)).base64EncodedString())))
        #expect(policy.partners.map(\.id) == ["acme", "globex"])
    }

    /// Absent sections take the defaults SPEC §2 lists; retries default to none, slow_call to off.
    @Test func absentKeysTakeDefaults() throws {
        var sources = PolicyFixtures.sources().filter { $0.relativePath != "gateway.yaml" && $0.relativePath != "upstreams.yaml" }
        sources.append(PolicySource(relativePath: "gateway.yaml", text: "listen: { http: 0.0.0.0:8080 }\n"))
        sources.append(PolicySource(relativePath: "upstreams.yaml", text: "upstreams:\n  orders: { url: http://orders.internal }\n  pricing: { url: https://pricing.internal:8443 }\n"))
        let policy = try PolicyFixtures.load(sources)
        let gateway = policy.gateway
        #expect(gateway.listen.admin == ListenAddress(host: "127.0.0.1", port: 9090))
        #expect(gateway.tls == nil)
        #expect(gateway.store == GatewayPolicy.Store())
        #expect(gateway.store.redis == nil && gateway.store.onRedisFailure == .local && gateway.store.expectedInstances == 1)
        #expect(gateway.limits.maxRequestBody == 10 << 20 && gateway.limits.maxHeaderBytes == 16 << 10)
        #expect(gateway.limits.clientHeaderTimeout == .seconds(10) && gateway.limits.idleTimeout == .seconds(60))
        #expect(gateway.tasks.workers == 16 && gateway.tasks.lease == .seconds(30) && gateway.tasks.retention == .seconds(604_800))
        #expect(gateway.idempotency.retention == .seconds(86_400))
        #expect(gateway.webhooks.timeout == .seconds(15) && gateway.webhooks.schedule.count == 9)
        let orders = try #require(policy.upstreams["orders"])
        #expect(orders.targets[0].address.port == 80 && policy.upstreams["pricing"]?.targets[0].address.useTLS == true)
        #expect(orders.connectTimeout == .seconds(1) && orders.requestTimeout == .seconds(30))
        #expect(orders.maxInFlight == 64 && orders.queueTimeout == .milliseconds(100))
        #expect(orders.connectTimeout == .seconds(1) && orders.requestTimeout == .seconds(30) && orders.bodyTimeout == .seconds(30))
        #expect(orders.circuitBreaker == UpstreamPolicy.CircuitBreaker())
        #expect(orders.circuitBreaker.slowCall == nil)
        #expect(orders.retries.attempts == 0)
    }

    /// A Redis URL with credentials, database and TLS scheme parses; the password never prints.
    @Test func redisURLParsesAndHidesPassword() throws {
        let url = try RedisURL.parse("rediss://app:s3cret@redis.internal:6380/2").get()
        #expect(url.useTLS && url.host == "redis.internal" && url.port == 6380 && url.database == 2)
        #expect(url.username == "app" && url.password == "s3cret")
        #expect(url.description == "rediss://app:***@redis.internal:6380/2")
        #expect(try RedisURL.parse("redis://127.0.0.1").get().port == 6379)
    }

    /// A Sentinel URL: sentinels (default port 26379, IPv6 in brackets), master name, database,
    /// credentials for Redis and a password of the sentinels' own; none of them prints.
    @Test func sentinelURLParses() throws {
        let url = try RedisURL.parse("rediss+sentinel://app:s3cret@s1:26380,[::1],10.0.0.3:26381/orders/2?sentinel_password=p%40ss").get()
        #expect(url.useTLS && url.database == 2 && url.username == "app" && url.password == "s3cret")
        let sentinels = [RedisURL.Endpoint(host: "s1", port: 26380), RedisURL.Endpoint(host: "::1", port: 26379), RedisURL.Endpoint(host: "10.0.0.3", port: 26381)]
        #expect(url.topology == .sentinel(master: "orders", sentinels: sentinels, username: nil, password: "p@ss"))
        #expect(url.description == "rediss+sentinel://app:***@s1:26380,[::1]:26379,10.0.0.3:26381/orders/2")
        let plain = try RedisURL.parse("redis+sentinel://127.0.0.1/mymaster").get()
        #expect(!plain.useTLS && plain.database == 0 && plain.password == nil)
        #expect(plain.topology == .sentinel(master: "mymaster", sentinels: [.init(host: "127.0.0.1", port: 26379)], username: nil, password: nil))
    }

    /// Malformed Sentinel URLs say what is wrong and never echo a password.
    @Test(arguments: [
        ("redis+sentinel:///mymaster", "no sentinel"), ("redis+sentinel://s1:26379", "missing the master name"),
        ("redis+sentinel://s1:99999/m", "sentinel port must be 1-65535"), ("redis+sentinel://s1:x/m", "sentinel port"),
        ("redis+sentinel://s1,,s2/m", "without a host"), ("redis+sentinel://s1/m/x", "expected /MASTER_NAME[/DB]"),
        ("redis+sentinel://s1/m/1/2", "expected /MASTER_NAME[/DB]"), ("redis+sentinel://s1/m?sentinel_pw=hunter2", "unknown parameter"),
        ("redis+sentinel://s1/m#f", "fragment"), ("redis+sentinel://[::1/m", "unclosed"),
    ])
    func malformedSentinelURLIsRejected(_ example: (text: String, reason: String)) {
        guard case .failure(let problem) = RedisURL.parse(example.text) else { Issue.record("\(example.text) parsed"); return }
        #expect(problem.message.contains(example.reason), "\(problem.message)")
        #expect(!problem.message.contains("hunter2"))
    }

    /// A cluster URL names its seed nodes (default port 6379), database 0 only, TLS with `rediss+`.
    @Test func clusterURL() throws {
        let url = try RedisURL.parse("rediss+cluster://app:s3cret@n1:7000,[::1]:7001,n3/0").get()
        #expect(url.useTLS && url.username == "app" && url.password == "s3cret" && url.database == 0)
        #expect(url.topology == .cluster(seeds: [.init(host: "n1", port: 7000), .init(host: "::1", port: 7001), .init(host: "n3", port: 6379)]))
        #expect(url.description == "rediss+cluster://app:***@n1:7000,[::1]:7001,n3:6379")
        #expect(try RedisURL.parse("redis+cluster://127.0.0.1:7000").get().topology == .cluster(seeds: [.init(host: "127.0.0.1", port: 7000)]))
    }

    /// Malformed cluster URLs say what is wrong and never echo a password.
    @Test(arguments: [
        ("redis+cluster://", "no seed node"), ("redis+cluster://:hunter2@", "no seed node"), ("redis+cluster://n1:7000/1", "database 0 only"),
        ("redis+cluster://n1:0", "seed node port must be 1-65535"), ("redis+cluster://n1:70000,n2:7001", "seed node port must be 1-65535"),
        ("redis+cluster://n1:x", "seed node port"), ("redis+cluster://n1,,n2", "without a host"), ("redis+cluster://n1?x=1", "not supported"),
        ("redis+cluster://u:hunter2@n1/db", "database 0 only"), ("redis+cluster://n1 n2", "bad seed node host"),
    ])
    func malformedClusterURLIsRejected(_ example: (text: String, reason: String)) {
        guard case .failure(let problem) = RedisURL.parse(example.text) else { Issue.record("\(example.text) parsed"); return }
        #expect(problem.message.contains(example.reason), "\(problem.message)")
        #expect(!problem.message.contains("hunter2"))
    }

    /// Malformed Redis URLs are rejected with a reason.
    @Test(arguments: ["127.0.0.1:6379", "redis://", "redis://host:99999", "redis://host/db", "redis://host?x=1", "tcp://host"])
    func malformedRedisURLIsRejected(_ text: String) {
        #expect((try? RedisURL.parse(text).get()) == nil)
    }

    /// Durations, sizes and percentages accept the documented forms only.
    @Test func scalarFormats() {
        #expect(PolicyValueParser.duration("250ms") == .milliseconds(250))
        #expect(PolicyValueParser.duration("1.5s") == .milliseconds(1_500))
        #expect(PolicyValueParser.duration("2m") == .seconds(120))
        #expect(PolicyValueParser.duration("30d") == .seconds(2_592_000))
        for bad in ["", "5", "s", "5 s", "-5s", "5sec", ".5s", "1e3s", "5S"] {
            #expect(PolicyValueParser.duration(bad) == nil, "\(bad)")
        }
        #expect(PolicyValueParser.size("512KiB") == 524_288)
        #expect(PolicyValueParser.size("10MiB") == 10_485_760)
        #expect(PolicyValueParser.size("1024") == 1024)
        for bad in ["10MB", "1.5MiB", "-1KiB", "KiB", "99999999999GiB"] {
            #expect(PolicyValueParser.size(bad) == nil, "\(bad)")
        }
        #expect(PolicyValueParser.percentage("50%") == 0.5)
        #expect(PolicyValueParser.percentage("101%") == nil)
        #expect(PolicyValueParser.percentage("0.5") == nil)
        #expect(PolicyValueParser.listenAddress("[::1]:8443") == ListenAddress(host: "::1", port: 8443))
        #expect(PolicyValueParser.listenAddress("0.0.0.0:70000") == nil)
    }

    /// An `env:NAME` secret reads the environment at load time.
    @Test func environmentSecretIsResolved() throws {
        let secret = "whsec_" + Data(repeating: 7, count: 24).base64EncodedString()
        let policy = try PolicyFixtures.load(environment: ["ACME_WEBHOOK_SECRET": secret])
        #expect(policy.partners.first?.webhook?.secret == (try WebhookSecret(secret)))
    }

    /// The version hash changes with any file's content and ignores file order.
    @Test func versionHashTracksContent() throws {
        let sources = PolicyFixtures.sources()
        let a = try PolicyFixtures.load(sources).versionHash
        let b = try PolicyFixtures.load(sources.reversed()).versionHash
        var edited = sources
        edited[0].text += "\n# comment\n"
        let c = try PolicyFixtures.load(edited).versionHash
        #expect(a == b && a != c && a.count == 16)
    }
}
