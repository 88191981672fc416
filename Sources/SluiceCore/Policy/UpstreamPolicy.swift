import Foundation

/// One backend service from `upstreams.yaml`.
public struct UpstreamPolicy: Sendable, Equatable {
    public struct Address: Sendable, Hashable, CustomStringConvertible {
        public var useTLS: Bool
        public var host: String
        public var port: Int
        /// Prefix put before every upstream path ("" or "/base").
        public var basePath: String

        public var description: String { "\(useTLS ? "https" : "http")://\(host):\(port)\(basePath)" }
    }

    /// Count-based circuit breaker over the last `window` calls.
    public struct CircuitBreaker: Sendable, Equatable {
        public var window = 20
        public var minCalls = 10
        /// Share of failures (0…1) that opens the breaker.
        public var failureRate = 0.5
        /// Calls slower than this count as failures; nil = off.
        public var slowCall: Duration?
        public var openFor: Duration = .seconds(10)
        public var halfOpenProbes = 3

        public init(
            window: Int = 20, minCalls: Int = 10, failureRate: Double = 0.5, slowCall: Duration? = nil, openFor: Duration = .seconds(10),
            halfOpenProbes: Int = 3
        ) {
            self.window = window
            self.minCalls = minCalls
            self.failureRate = failureRate
            self.slowCall = slowCall
            self.openFor = openFor
            self.halfOpenProbes = halfOpenProbes
        }
    }

    public enum RetryCondition: Sendable, Hashable, CustomStringConvertible {
        case connectError
        case status(Int)
        /// Not a policy value: a pool's one try elsewhere after a connection broke under a
        /// request that may go twice.
        case connectionBroke

        public var description: String {
            switch self {
            case .connectError: "connect-error"
            case .connectionBroke: "connection-broke"
            case .status(let code): String(code)
            }
        }
    }

    public struct Retries: Sendable, Equatable {
        /// Extra tries after the first; 0 = never retry.
        public var attempts = 0
        public var on: Set<RetryCondition> = [.connectError, .status(502), .status(503), .status(504)]
        public var backoffMin: Duration = .milliseconds(50)
        public var backoffMax: Duration = .seconds(1)
        /// Retries never exceed this share (0…1) of recent requests.
        public var budget = 0.2

        /// The defaults (no retries).
        public init() {}
    }

    public var name: String
    /// Where calls go: one target for `url:`, several for `targets:` (SPEC §7).
    public var targets: [Target]
    /// How often target names are resolved again (every A/AAAA record is a target).
    public var dnsRefresh: Duration = .seconds(30)
    public var balancer = Balancer.leastRequest
    public var health = Health()
    /// Below this share (0…1) of healthy targets, calls go to all of them.
    public var panicThreshold = 0.5
    public var connectTimeout: Duration = .seconds(1)
    /// Until the response head arrives; a route may override it.
    public var requestTimeout: Duration = .seconds(30)
    /// Longest pause allowed while the response body streams; a stalled upstream is cut off.
    public var bodyTimeout: Duration = .seconds(30)
    /// Bulkhead: calls in flight at once.
    public var maxInFlight = 64
    /// How long a call waits for a bulkhead slot before 503.
    public var queueTimeout: Duration = .milliseconds(100)
    public var circuitBreaker = CircuitBreaker()
    public var retries = Retries()
    public var location: SourceLocation
}

extension UpstreamPolicy {
    /// The valid upstreams, and every declared name (valid or not) for cross-reference checks.
    static func readAll(_ root: YAMLValue) -> (upstreams: [String: UpstreamPolicy], declared: Set<String>) {
        guard let file = root.mapping("upstreams.yaml") else { return ([:], []) }
        let entries = file.required("upstreams")?.mapping("upstreams")
        file.finish()
        var upstreams: [String: UpstreamPolicy] = [:]
        for entry in entries?.namedEntries ?? [] {
            guard PolicyNames.isValid(entry.name) else {
                entry.key.report(PolicyNames.problem("upstream name", entry.name))
                continue
            }
            if let upstream = read(name: entry.name, entry.value) { upstreams[entry.name] = upstream }
        }
        if entries?.namedEntries.isEmpty == true { entries?.value.report("upstreams must name at least one upstream") }
        return (upstreams, Set(entries?.namedEntries.map(\.name) ?? []))
    }

    private static func read(name: String, _ value: YAMLValue) -> UpstreamPolicy? {
        let context = "upstream '\(name)'"
        guard let map = value.mapping(context) else { return nil }
        let targets = readTargets(map, value, context)
        var upstream = UpstreamPolicy(name: name, targets: targets ?? [], location: value.location)
        if let d = map.optional("dns_refresh")?.duration("\(context) dns_refresh") { upstream.dnsRefresh = d }
        if let balancer = map.optional("balancer")?.oneOf(Balancer.self, "\(context) balancer") { upstream.balancer = balancer }
        if let health = map.optional("health").flatMap({ Health.read($0, context) }) { upstream.health = health }
        if let share = map.optional("panic_threshold")?.percentage("\(context) panic_threshold") { upstream.panicThreshold = share }
        if let d = map.optional("connect_timeout")?.duration("\(context) connect_timeout") { upstream.connectTimeout = d }
        if let d = map.optional("request_timeout")?.duration("\(context) request_timeout") { upstream.requestTimeout = d }
        if let d = map.optional("body_timeout")?.duration("\(context) body_timeout") { upstream.bodyTimeout = d }
        if let n = map.optional("max_in_flight")?.int("\(context) max_in_flight", min: 1, max: 100_000) {
            upstream.maxInFlight = n
        }
        if let d = map.optional("queue_timeout")?.duration("\(context) queue_timeout", allowZero: true) {
            upstream.queueTimeout = d
        }
        if let breaker = map.optional("circuit_breaker").flatMap({ readBreaker($0, context) }) {
            upstream.circuitBreaker = breaker
        }
        if let retries = map.optional("retries").flatMap({ readRetries($0, context) }) { upstream.retries = retries }
        map.finish()
        return targets == nil ? nil : upstream
    }

    /// `url:` (one target) or `targets:` (a list of `{url, weight}`), never both.
    private static func readTargets(_ map: MappingReader, _ value: YAMLValue, _ context: String) -> [Target]? {
        switch (map.optional("url"), map.optional("targets")) {
        case (.some, let list?):
            list.report("\(context) has both url and targets: give one (url is the one-target shorthand)")
            return nil
        case (let url?, nil):
            return readAddress(url, context).map { [Target(address: $0, weight: 1, location: url.location)] }
        case (nil, let list?):
            guard let items = list.sequence("\(context) targets") else { return nil }
            guard !items.isEmpty, items.count <= TargetSet.capacity else {
                list.report("\(context) targets must list 1 to \(TargetSet.capacity) targets, got \(items.count)")
                return nil
            }
            var targets: [Target] = []
            var valid = true
            for item in items {
                guard let entry = item.mapping("a target of \(context)") else {
                    valid = false
                    continue
                }
                let address = entry.required("url").flatMap { readAddress($0, "a target of \(context)") }
                let weight = entry.optional("weight").map { $0.int("\(context) target weight", min: 1, max: 10_000) } ?? 1
                entry.finish()
                guard let address, let weight else {
                    valid = false
                    continue
                }
                if targets.contains(where: { $0.address == address }) {
                    item.report("\(context) lists the target \(address) twice")
                    valid = false
                    continue
                }
                targets.append(Target(address: address, weight: weight, location: item.location))
            }
            return valid ? targets : nil
        case (nil, nil):
            value.report("\(context) needs url or targets")
            return nil
        }
    }

    private static func readAddress(_ value: YAMLValue, _ context: String) -> Address? {
        guard let text = value.string("\(context) url") else { return nil }
        guard let components = URLComponents(string: text), let scheme = components.scheme,
            scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty
        else {
            value.report("\(context) url must be http://HOST[:PORT][/PATH] or https://…, got '\(text)'")
            return nil
        }
        guard components.query == nil, components.fragment == nil, components.user == nil else {
            value.report("\(context) url must not have credentials, a query or a fragment")
            return nil
        }
        let basePath = components.path.hasSuffix("/") ? String(components.path.dropLast()) : components.path
        return Address(
            useTLS: scheme == "https",
            host: host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host,
            port: components.port ?? (scheme == "https" ? 443 : 80),
            basePath: basePath
        )
    }

    private static func readBreaker(_ value: YAMLValue, _ context: String) -> CircuitBreaker? {
        let context = "\(context) circuit_breaker"
        guard let map = value.mapping(context) else { return nil }
        var breaker = CircuitBreaker()
        if let n = map.optional("window")?.int("\(context) window", min: 1, max: 10_000) { breaker.window = n }
        if let n = map.optional("min_calls")?.int("\(context) min_calls", min: 1, max: 10_000) { breaker.minCalls = n }
        if let rate = map.optional("failure_rate")?.percentage("\(context) failure_rate") {
            if rate == 0 {
                map.optional("failure_rate")?.report("\(context) failure_rate must be greater than 0%")
            } else {
                breaker.failureRate = rate
            }
        }
        if let d = map.optional("slow_call")?.duration("\(context) slow_call") { breaker.slowCall = d }
        if let d = map.optional("open_for")?.duration("\(context) open_for") { breaker.openFor = d }
        if let n = map.optional("half_open_probes")?.int("\(context) half_open_probes", min: 1, max: 1_000) {
            breaker.halfOpenProbes = n
        }
        map.finish()
        if breaker.minCalls > breaker.window {
            value.report("\(context) min_calls (\(breaker.minCalls)) must not exceed window (\(breaker.window))")
        }
        return breaker
    }

    private static func readRetries(_ value: YAMLValue, _ context: String) -> Retries? {
        let context = "\(context) retries"
        guard let map = value.mapping(context) else { return nil }
        var retries = Retries()
        if let n = map.optional("attempts")?.int("\(context) attempts", min: 0, max: 10) { retries.attempts = n }
        if let list = map.optional("on")?.stringList("\(context) on") {
            var conditions: Set<RetryCondition> = []
            for (text, item) in list {
                if text == "connect-error" {
                    conditions.insert(.connectError)
                } else if let code = Int(text), (500...599).contains(code) || code == 429 || code == 408 {
                    conditions.insert(.status(code))
                } else {
                    item.report("\(context) on: expected connect-error or a status code (408, 429, 5xx), got '\(text)'")
                }
            }
            retries.on = conditions
        }
        if let item = map.optional("backoff"), let text = item.string("\(context) backoff") {
            let parts = text.components(separatedBy: "..")
            if parts.count == 2, let low = PolicyValueParser.duration(parts[0]), let high = PolicyValueParser.duration(parts[1]),
                low <= high, high > .zero
            {
                retries.backoffMin = low
                retries.backoffMax = high
            } else {
                item.report("\(context) backoff must be MIN..MAX durations like 50ms..1s with MIN <= MAX, got '\(text)'")
            }
        }
        if let budget = map.optional("budget")?.percentage("\(context) budget") { retries.budget = budget }
        map.finish()
        return retries
    }
}

/// Names used as identifiers (partners, upstreams, plans, routes): they appear in Redis keys and metric labels.
enum PolicyNames {
    static func isValid(_ name: String) -> Bool {
        guard let first = name.utf8.first, name.utf8.count <= 64 else { return false }
        return isAlphanumeric(first) && name.utf8.allSatisfy { isAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }
    }

    static func problem(_ what: String, _ name: String) -> String {
        "\(what) '\(name)' must be 1-64 characters of a-z, A-Z, 0-9, '-' and '_', starting with a letter or digit"
    }

    private static func isAlphanumeric(_ c: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c)
    }
}
