import Foundation

/// `gateway.yaml`: listeners, TLS, store, global limits, background work and admin tokens.
public struct GatewayPolicy: Sendable, Equatable {
    public struct Listen: Sendable, Equatable {
        /// Partner traffic over TLS (HTTP/1.1 and HTTP/2 by ALPN); nil = no TLS listener.
        public var https: ListenAddress?
        /// Plain partner listener, e.g. behind a TLS load balancer; nil = none.
        public var http: ListenAddress?
        /// Health, metrics and admin API; default 127.0.0.1:9090; nil = none.
        public var admin: ListenAddress?
        /// Peers (load balancers in front of the plain listener) whose `X-Forwarded-For` is kept
        /// and appended to; every other peer's is replaced by the address the gateway saw.
        public var trustedProxies: [IPNetwork] = []
    }

    public struct TLS: Sendable, Equatable {
        /// Absolute paths (the file gives them relative to gateway.yaml).
        public var certificatePath: String
        public var keyPath: String
        /// When set, partners may authenticate with a client certificate issued by this CA.
        public var clientCAPath: String?
        /// Where the tls section is, for problems found when the files are loaded.
        public var location: SourceLocation
    }

    public enum RedisFailureMode: String, Sendable, CaseIterable {
        /// Keep enforcing per-instance limits sized by `expected_instances`.
        case local
        /// Admit while the store is unreachable.
        case allow
        /// Answer 503 while the store is unreachable.
        case deny
    }

    /// Which writes wait for a replica (SPEC §8 `durability`).
    public enum Durability: String, Sendable, CaseIterable {
        /// Acknowledged by the primary alone (a failover can lose the last writes).
        case primary
        /// The writes a partner is told about wait for one replica (`WAIT 1 replica_timeout`).
        case replicated
    }

    public struct Store: Sendable, Equatable {
        /// nil = the embedded in-memory store (one instance only).
        public var redis: RedisURL?
        public var onRedisFailure: RedisFailureMode = .local
        /// How many gateways share the store; the local fallback divides limits by it.
        public var expectedInstances: Int = 1
        /// Deadline of every store call on the request path's fast lane (admission, idempotency;
        /// default 50ms), so a dead Redis never stalls a request.
        public var timeout: Duration = .milliseconds(50)
        /// Deadline of bulk store work on its own connections (task accepts with their bodies,
        /// the worker's read of a request, results, webhook messages; default 5s).
        public var bulkTimeout: Duration = .seconds(5)
        public var durability: Durability = .primary
        /// With `replicated`: how long a write waits for one replica.
        public var replicaTimeout: Duration = .milliseconds(200)
        /// CA certificate (PEM) trusted for a `rediss://` server; nil = the system's roots.
        public var tlsCAPath: String?
        /// Where the store section is (gateway.yaml), for problems found when connecting.
        public var location: SourceLocation?
    }

    public struct Limits: Sendable, Equatable {
        public var maxRequestBody = 10 << 20
        public var maxHeaderBytes = 16 << 10
        public var clientHeaderTimeout: Duration = .seconds(10)
        public var idleTimeout: Duration = .seconds(60)
    }

    public struct Tasks: Sendable, Equatable {
        public var workers = 16
        public var lease: Duration = .seconds(30)
        /// Runs a task may lose (its instance died or stalled past the lease, so the run was taken
        /// over) before it fails instead of starting again.
        public var maxAttempts = 5
        public var retention: Duration = .seconds(7 * 86_400)
        /// Queue shards in a Redis store: each is one hash slot, so on Redis Cluster they spread
        /// over the primaries (64 covers a dozen of them). Every instance must use the same number.
        public var shards = 64
    }

    public struct Idempotency: Sendable, Equatable {
        /// How long a recorded response can be replayed.
        public var retention: Duration = .seconds(86_400)
    }

    public struct Usage: Sendable, Equatable {
        /// How long per-day usage counts are kept for reports.
        public var retention: Duration = .seconds(400 * 86_400)
    }

    /// Trace export (Sluice extension). Without an endpoint the W3C context still propagates.
    public struct Tracing: Sendable, Equatable {
        public enum OTLPProtocol: String, Sendable, CaseIterable {
            case protobuf = "http/protobuf"
            case json = "http/json"
        }

        /// The OTLP/HTTP traces URL spans are exported to (a URL without a path gets `/v1/traces`); nil = no export.
        public var otlpEndpoint: String?
        public var otlpProtocol = OTLPProtocol.protobuf
        /// `service.name` of the exported spans.
        public var serviceName = "sluice"
        /// Share of partner requests whose spans are recorded and exported (by trace id, so
        /// every instance decides alike). Task runs and webhook deliveries are always recorded.
        public var sampleRatio = 0.01
    }

    public struct Webhooks: Sendable, Equatable {
        public var timeout: Duration = .seconds(15)
        /// Delays before each retry; after the last one the delivery is dead.
        public var schedule: [Duration] = [5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400].map { .seconds($0) }
    }

    public enum AdminRole: String, Sendable, CaseIterable, Comparable {
        /// Read only.
        case viewer
        /// Read, redrive and cancel.
        case `operator`

        public static func < (lhs: AdminRole, rhs: AdminRole) -> Bool { lhs == .viewer && rhs == .operator }
    }

    public struct AdminToken: Sendable, Equatable {
        public var name: String
        public var sha256: SHA256Digest
        public var role: AdminRole
    }

    public var listen: Listen
    public var tls: TLS?
    public var store: Store
    public var limits: Limits
    public var tasks: Tasks
    public var idempotency: Idempotency
    public var webhooks: Webhooks
    public var usage: Usage
    public var tracing: Tracing
    public var adminTokens: [AdminToken]
}

extension GatewayPolicy {
    static let defaultAdmin = ListenAddress(host: "127.0.0.1", port: 9090)

    /// Reads gateway.yaml; `directory` resolves the TLS paths, which are relative to the file.
    static func read(_ root: YAMLValue, directory: String) -> GatewayPolicy? {
        guard let map = root.mapping("gateway.yaml") else { return nil }
        let listen = map.required("listen").flatMap(readListen)
        let tls = map.optional("tls").flatMap { readTLS($0, directory: directory) }
        let store = map.optional("store").map { readStore($0, directory: directory) } ?? Store()
        let limits = map.optional("limits").map(readLimits) ?? Limits()
        let tasks = map.optional("tasks").map(readTasks) ?? Tasks()
        let idempotency = map.optional("idempotency").map(readIdempotency) ?? Idempotency()
        let webhooks = map.optional("webhooks").map(readWebhooks) ?? Webhooks()
        let usage = map.optional("usage").map(readUsage) ?? Usage()
        let tracing = map.optional("tracing").map(readTracing) ?? Tracing()
        let tokens = map.optional("admin").map(readAdmin) ?? []
        map.finish()

        guard let listen else { return nil }
        if listen.https == nil && listen.http == nil {
            map.value.report("listen needs https or http (or both) for partner traffic")
        }
        if listen.https != nil && tls == nil && !map.contains("tls") {
            map.value.report("listen.https needs a tls section with certificate and key")
        }
        return GatewayPolicy(
            listen: listen, tls: tls, store: store, limits: limits, tasks: tasks, idempotency: idempotency, webhooks: webhooks,
            usage: usage, tracing: tracing, adminTokens: tokens
        )
    }

    private static func readListen(_ value: YAMLValue) -> Listen? {
        guard let map = value.mapping("listen") else { return nil }
        func address(_ key: String) -> ListenAddress? {
            map.optional(key).flatMap { item in
                item.string("listen.\(key)").flatMap { text in
                    let address = PolicyValueParser.listenAddress(text)
                    if address == nil { item.report("expected HOST:PORT for listen.\(key), got '\(text)'") }
                    return address
                }
            }
        }
        let https = address("https")
        let http = address("http")
        let admin = map.contains("admin") ? address("admin") : defaultAdmin
        let proxies = map.optional("trusted_proxies")?.sequence("listen.trusted_proxies") ?? []
        let trustedProxies = proxies.compactMap { item -> IPNetwork? in
            guard let text = item.string("an entry of listen.trusted_proxies") else { return nil }
            guard let network = IPNetwork(text) else {
                item.report("listen.trusted_proxies: expected an address or CIDR network like 10.0.0.0/8 or 2001:db8::/32, got '\(text)'")
                return nil
            }
            return network
        }
        map.finish()
        return Listen(https: https, http: http, admin: admin, trustedProxies: trustedProxies)
    }

    private static func readTLS(_ value: YAMLValue, directory: String) -> TLS? {
        guard let map = value.mapping("tls") else { return nil }
        func path(_ item: YAMLValue?, _ key: String) -> String? {
            item?.string("tls.\(key)").map { resolve($0, against: directory) }
        }
        let certificate = path(map.required("certificate"), "certificate")
        let key = path(map.required("key"), "key")
        let clientCA = path(map.optional("client_ca"), "client_ca")
        map.finish()
        guard let certificate, let key else { return nil }
        return TLS(certificatePath: certificate, keyPath: key, clientCAPath: clientCA, location: value.location)
    }

    private static func readStore(_ value: YAMLValue, directory: String) -> Store {
        var store = Store()
        store.location = value.location
        guard let map = value.mapping("store") else { return store }
        if let item = map.optional("redis"), let text = item.secret("store.redis") {
            switch RedisURL.parse(text) {
            case .success(let url): store.redis = url
            case .failure(let problem): item.report("store.redis: \(problem.message)")
            }
        }
        if let mode = map.optional("on_redis_failure")?.oneOf(RedisFailureMode.self, "store.on_redis_failure") {
            store.onRedisFailure = mode
        }
        if let count = map.optional("expected_instances")?.int("store.expected_instances", min: 1, max: 1_000) {
            store.expectedInstances = count
        }
        if let timeout = map.optional("timeout")?.duration("store.timeout") {
            store.timeout = timeout
        }
        if let item = map.optional("bulk_timeout"), let timeout = item.duration("store.bulk_timeout") {
            if timeout < store.timeout {
                item.report("store.bulk_timeout must be at least store.timeout (\(store.timeout.milliseconds)ms)")
            } else {
                store.bulkTimeout = timeout
            }
        }
        if let durability = map.optional("durability")?.oneOf(Durability.self, "store.durability") {
            store.durability = durability
        }
        if let item = map.optional("replica_timeout"), let timeout = item.duration("store.replica_timeout") {
            if timeout <= .zero || timeout > .seconds(10) {
                item.report("store.replica_timeout must be more than 0 and at most 10s")
            } else {
                store.replicaTimeout = timeout
            }
        }
        if let path = map.optional("tls_ca")?.string("store.tls_ca") {
            store.tlsCAPath = resolve(path, against: directory)
        }
        map.finish()
        return store
    }

    private static func readLimits(_ value: YAMLValue) -> Limits {
        var limits = Limits()
        guard let map = value.mapping("limits") else { return limits }
        if let size = map.optional("max_request_body")?.size("limits.max_request_body") { limits.maxRequestBody = size }
        if let size = map.optional("max_header_bytes")?.size("limits.max_header_bytes") {
            if size < 1024 || size > 1 << 20 {
                map.optional("max_header_bytes")?.report("limits.max_header_bytes must be between 1KiB and 1MiB")
            } else {
                limits.maxHeaderBytes = size
            }
        }
        if let timeout = map.optional("client_header_timeout")?.duration("limits.client_header_timeout") {
            limits.clientHeaderTimeout = timeout
        }
        if let timeout = map.optional("idle_timeout")?.duration("limits.idle_timeout") { limits.idleTimeout = timeout }
        map.finish()
        return limits
    }

    private static func readTasks(_ value: YAMLValue) -> Tasks {
        var tasks = Tasks()
        guard let map = value.mapping("tasks") else { return tasks }
        if let workers = map.optional("workers")?.int("tasks.workers", min: 1, max: 10_000) { tasks.workers = workers }
        if let lease = map.optional("lease")?.duration("tasks.lease") { tasks.lease = lease }
        if let attempts = map.optional("max_attempts")?.int("tasks.max_attempts", min: 1, max: 100) { tasks.maxAttempts = attempts }
        if let retention = map.optional("retention")?.duration("tasks.retention") { tasks.retention = retention }
        if let shards = map.optional("shards")?.int("tasks.shards", min: 1, max: 1_024) { tasks.shards = shards }
        map.finish()
        return tasks
    }

    private static func readIdempotency(_ value: YAMLValue) -> Idempotency {
        var idempotency = Idempotency()
        guard let map = value.mapping("idempotency") else { return idempotency }
        if let item = map.optional("retention"), let retention = item.duration("idempotency.retention") {
            if retention < .seconds(1) {
                item.report("idempotency.retention must be at least 1s")
            } else {
                idempotency.retention = retention
            }
        }
        map.finish()
        return idempotency
    }

    private static func readUsage(_ value: YAMLValue) -> Usage {
        var usage = Usage()
        guard let map = value.mapping("usage") else { return usage }
        if let item = map.optional("retention"), let retention = item.duration("usage.retention") {
            if retention < .seconds(86_400) {
                item.report("usage.retention must be at least 1d (usage is counted per day)")
            } else {
                usage.retention = retention
            }
        }
        map.finish()
        return usage
    }

    private static func readTracing(_ value: YAMLValue) -> Tracing {
        var tracing = Tracing()
        guard let map = value.mapping("tracing") else { return tracing }
        if let item = map.optional("otlp_endpoint"), let text = item.string("tracing.otlp_endpoint") {
            if let endpoint = PolicyValueParser.otlpTracesEndpoint(text) {
                tracing.otlpEndpoint = endpoint
            } else {
                item.report("tracing.otlp_endpoint must be an http:// or https:// URL with a host, got '\(text)'")
            }
        }
        if let proto = map.optional("otlp_protocol")?.oneOf(Tracing.OTLPProtocol.self, "tracing.otlp_protocol") { tracing.otlpProtocol = proto }
        if let item = map.optional("sample_ratio"), let text = item.string("tracing.sample_ratio") {
            if let ratio = Double(text), ratio >= 0, ratio <= 1 {
                tracing.sampleRatio = ratio
            } else {
                item.report("tracing.sample_ratio must be a number from 0 to 1, got '\(text)'")
            }
        }
        if let item = map.optional("service_name"), let name = item.string("tracing.service_name") {
            if name.isEmpty || name.utf8.count > 128 || name.unicodeScalars.contains(where: { $0.value < 0x20 }) {
                item.report("tracing.service_name must be 1-128 printable characters")
            } else {
                tracing.serviceName = name
            }
        }
        map.finish()
        return tracing
    }

    private static func readWebhooks(_ value: YAMLValue) -> Webhooks {
        var webhooks = Webhooks()
        guard let map = value.mapping("webhooks") else { return webhooks }
        if let timeout = map.optional("timeout")?.duration("webhooks.timeout") { webhooks.timeout = timeout }
        if let list = map.optional("schedule")?.sequence("webhooks.schedule") {
            let delays = list.compactMap { $0.duration("an entry of webhooks.schedule") }
            if delays.count == list.count { webhooks.schedule = delays }
        }
        map.finish()
        return webhooks
    }

    private static func readAdmin(_ value: YAMLValue) -> [AdminToken] {
        guard let map = value.mapping("admin") else { return [] }
        let items = map.optional("tokens")?.sequence("admin.tokens") ?? []
        map.finish()
        var seenNames: Set<String> = []
        return items.compactMap { item in
            guard let token = item.mapping("an admin token") else { return nil }
            let name = token.required("name")?.string("admin token name")
            let hash = token.required("sha256").flatMap { SHA256Digest.read($0, "admin token sha256") }
            let role = token.required("role")?.oneOf(AdminRole.self, "admin token role")
            token.finish()
            guard let name, let hash, let role else { return nil }
            if !seenNames.insert(name).inserted { item.report("admin token name '\(name)' is used twice") }
            return AdminToken(name: name, sha256: hash, role: role)
        }
    }

    static func resolve(_ path: String, against directory: String) -> String {
        if path.hasPrefix("/") { return path }
        return URL(fileURLWithPath: directory).appendingPathComponent(path).standardizedFileURL.path
    }
}
