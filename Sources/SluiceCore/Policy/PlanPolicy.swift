/// Limits a partner gets: a token bucket, a calendar quota and a concurrency cap. An absent
/// part means no limit of that kind.
public struct LimitSet: Sendable, Equatable {
    public struct Rate: Sendable, Equatable {
        /// Tokens added per second.
        public var perSecond: Double
        /// Bucket size: the most tokens a partner can spend at once.
        public var burst: Int

        public init(perSecond: Double, burst: Int) {
            self.perSecond = perSecond
            self.burst = burst
        }
    }

    public enum QuotaWindow: String, Sendable, CaseIterable {
        /// UTC calendar day.
        case day
        /// UTC calendar month.
        case month
    }

    public struct Quota: Sendable, Equatable {
        public var requests: Int
        public var per: QuotaWindow

        public init(requests: Int, per: QuotaWindow) {
            self.requests = requests
            self.per = per
        }
    }

    public var rate: Rate?
    public var quota: Quota?
    /// Requests in flight at once.
    public var concurrency: Int?

    public init(rate: Rate? = nil, quota: Quota? = nil, concurrency: Int? = nil) {
        self.rate = rate
        self.quota = quota
        self.concurrency = concurrency
    }

    /// This set with every part present in `overrides` replaced.
    public func applying(_ overrides: LimitSet) -> LimitSet {
        LimitSet(
            rate: overrides.rate ?? rate,
            quota: overrides.quota ?? quota,
            concurrency: overrides.concurrency ?? concurrency
        )
    }
}

extension LimitSet {
    /// The valid plans, and every declared name (valid or not) for cross-reference checks.
    static func readPlans(_ root: YAMLValue) -> (plans: [String: LimitSet], declared: Set<String>) {
        guard let file = root.mapping("plans.yaml") else { return ([:], []) }
        let entries = file.required("plans")?.mapping("plans")
        file.finish()
        var plans: [String: LimitSet] = [:]
        for entry in entries?.namedEntries ?? [] {
            guard PolicyNames.isValid(entry.name) else {
                entry.key.report(PolicyNames.problem("plan name", entry.name))
                continue
            }
            if let plan = read(entry.value, "plan '\(entry.name)'") { plans[entry.name] = plan }
        }
        return (plans, Set(entries?.namedEntries.map(\.name) ?? []))
    }

    /// Reads a plan or a partner's overrides (same keys).
    static func read(_ value: YAMLValue, _ context: String) -> LimitSet? {
        guard let map = value.mapping(context) else { return nil }
        var limits = LimitSet()
        if let rateMap = map.optional("rate")?.mapping("\(context) rate") {
            let perSecond = rateMap.required("per_second")?.positiveNumber("\(context) rate.per_second")
            let burst = rateMap.required("burst")?.int("\(context) rate.burst", min: 1, max: 1_000_000_000)
            rateMap.finish()
            if let perSecond, let burst { limits.rate = Rate(perSecond: perSecond, burst: burst) }
        }
        if let quotaMap = map.optional("quota")?.mapping("\(context) quota") {
            let requests = quotaMap.required("requests")?.int("\(context) quota.requests", min: 1, max: Int(Int32.max))
            let per = quotaMap.required("per")?.oneOf(QuotaWindow.self, "\(context) quota.per")
            quotaMap.finish()
            if let requests, let per { limits.quota = Quota(requests: requests, per: per) }
        }
        if let concurrency = map.optional("concurrency")?.int("\(context) concurrency", min: 1, max: 1_000_000) {
            limits.concurrency = concurrency
        }
        map.finish()
        return limits
    }
}
