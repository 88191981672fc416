/// The parts of an upstream that spread calls over several targets (SPEC §7).
extension UpstreamPolicy {
    /// One place calls may go; a host name stands for every address it resolves to.
    public struct Target: Sendable, Equatable {
        public var address: Address
        /// Share of calls relative to the other targets (≥ 1).
        public var weight: Int
        public var location: SourceLocation

        public init(address: Address, weight: Int, location: SourceLocation) {
            self.address = address
            self.weight = weight
            self.location = location
        }

        public static func == (a: Target, b: Target) -> Bool { a.address == b.address && a.weight == b.weight }
    }

    /// How a call picks among the healthy targets.
    public enum Balancer: String, Sendable, CaseIterable {
        /// Power of two choices weighted by target weight: the one with fewer calls in flight per weight.
        case leastRequest = "least_request"
        /// Smooth weighted round robin.
        case roundRobin = "round_robin"
        /// A partner sticks to one target while it is healthy (weighted rendezvous hashing).
        case partnerHash = "partner_hash"
    }

    /// Active probes and passive ejection.
    public struct Health: Sendable, Equatable {
        /// HTTP probes of every target; 2xx is good.
        public struct Active: Sendable, Equatable {
            public var path = "/readyz"
            public var interval: Duration = .seconds(5)
            public var timeout: Duration = .seconds(1)
            /// Good probes in a row that bring a target (back) in.
            public var healthy = 2
            /// Bad probes in a row that take a target out.
            public var unhealthy = 3

            public init() {}
        }

        /// Ejection after failures the gateway saw (connect errors, timeouts, resets, 502/503/504).
        public struct Passive: Sendable, Equatable {
            public var consecutiveFailures = 5
            /// How long the first ejection lasts; the n-th in a row lasts n times as long.
            public var ejection: Duration = .seconds(30)
            public var maxEjection: Duration = .seconds(300)
            /// At most this share (0…1) of the targets is ejected at once.
            public var maxEjected = 0.5

            public init() {}
        }

        /// nil: no probes.
        public var active: Active?
        public var passive = Passive()

        public init() {}
    }
}

extension UpstreamPolicy.Health {
    static func read(_ value: YAMLValue, _ upstream: String) -> Self? {
        let context = "\(upstream) health"
        guard let map = value.mapping(context) else { return nil }
        var health = Self()
        if let active = map.optional("active") {
            health.active = readActive(active, "\(context) active")
        }
        if let passive = map.optional("passive").flatMap({ readPassive($0, "\(context) passive") }) {
            health.passive = passive
        }
        map.finish()
        return health
    }

    private static func readActive(_ value: YAMLValue, _ context: String) -> Active? {
        guard let map = value.mapping(context) else { return nil }
        var active = Active()
        if let item = map.optional("path"), let path = item.string("\(context) path") {
            if path.hasPrefix("/"), path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) {
                active.path = path
            } else {
                item.report("\(context) path must start with '/' and hold no spaces or control characters, got '\(path)'")
            }
        }
        if let d = map.optional("interval")?.duration("\(context) interval") { active.interval = d }
        if let d = map.optional("timeout")?.duration("\(context) timeout") { active.timeout = d }
        if let n = map.optional("healthy")?.int("\(context) healthy", min: 1, max: 100) { active.healthy = n }
        if let n = map.optional("unhealthy")?.int("\(context) unhealthy", min: 1, max: 100) { active.unhealthy = n }
        map.finish()
        return active
    }

    private static func readPassive(_ value: YAMLValue, _ context: String) -> Passive? {
        guard let map = value.mapping(context) else { return nil }
        var passive = Passive()
        if let n = map.optional("consecutive_failures")?.int("\(context) consecutive_failures", min: 1, max: 10_000) {
            passive.consecutiveFailures = n
        }
        if let d = map.optional("ejection")?.duration("\(context) ejection") { passive.ejection = d }
        if let d = map.optional("max_ejection")?.duration("\(context) max_ejection") { passive.maxEjection = d }
        if let share = map.optional("max_ejected")?.percentage("\(context) max_ejected") { passive.maxEjected = share }
        map.finish()
        if passive.maxEjection < passive.ejection {
            value.report("\(context) max_ejection (\(passive.maxEjection)) must not be shorter than ejection (\(passive.ejection))")
        }
        return passive
    }
}
