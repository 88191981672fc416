/// What admission enforces for one request: a partner's effective limits and the route's cost.
public struct AdmissionLimits: Sendable, Hashable {
    public var ratePerSecond: Double?
    public var burst: Double
    public var quota: Int?
    public var quotaWindow: LimitSet.QuotaWindow
    public var concurrency: Int?
    /// Tokens the request takes.
    public var cost: Int

    /// - Parameter localShareOf: nil for limits shared by every instance (the store's). When an
    ///   instance enforces its own share (the local fallback while the shared store is down),
    ///   the number of instances: rate, burst and concurrency are divided by it, and quotas are
    ///   not enforced, as a local count would not know what the store had counted.
    public init(_ limits: LimitSet, cost: Int, localShareOf instances: Int? = nil) {
        let share = Double(max(1, instances ?? 1))
        ratePerSecond = limits.rate.map { $0.perSecond / share }
        burst = limits.rate.map { max(1, Double($0.burst) / share) } ?? 0
        quota = instances == nil ? limits.quota?.requests : nil
        quotaWindow = limits.quota?.per ?? .day
        concurrency = limits.concurrency.map { max(1, Int((Double($0) / share).rounded(.down))) }
        self.cost = cost
    }

    /// Nothing to enforce: admission needs no store at all.
    public var isUnlimited: Bool { ratePerSecond == nil && quota == nil && concurrency == nil }
}

/// Why a request was refused.
public enum AdmissionVerdict: String, Sendable, Equatable {
    case admitted
    case rateLimited = "rate"
    case quotaExceeded = "quota"
    case concurrencyLimited = "concurrency"
}

/// A decision and the state behind it, for the response headers.
public struct AdmissionDecision: Sendable, Equatable {
    public var verdict: AdmissionVerdict
    /// For refusals: when trying again can succeed.
    public var retryAfterMilliseconds: Int64 = 0
    /// Whole tokens left after this request.
    public var tokensRemaining: Int?
    /// Until the bucket is full again.
    public var bucketFullInMilliseconds: Int64?
    public var quotaRemaining: Int?
    public var quotaResetInMilliseconds: Int64?
    /// Length of the current quota window (a month's length varies).
    public var quotaWindowMilliseconds: Int64?

    public init(verdict: AdmissionVerdict) {
        self.verdict = verdict
    }
}

/// One partner's admission state: token bucket, quota counter and concurrency leases. The
/// embedded store and the local fallback keep one per partner; the Redis script keeps the
/// same three things in three keys and decides the same way:
///
/// - expired leases are dropped first (when they would count against the limit);
/// - the quota is checked first, then the bucket, then concurrency; a refusal changes nothing
///   (it costs no tokens and no quota);
/// - an admitted request takes `cost` tokens, one unit of quota and, with a concurrency
///   limit, a lease that expires at `now + leaseMilliseconds` unless renewed or released.
public struct PartnerLedger: Sendable {
    private var tokens: Double?
    private var tokensAt: Int64 = 0
    private var quotaWindowID: Int64 = .min
    private var quotaUsed = 0
    private var leases: [String: Int64] = [:]

    public init() {}

    public mutating func admit(_ limits: AdmissionLimits, lease: String?, leaseMilliseconds: Int64, now: Int64) -> AdmissionDecision {
        // Expired leases only matter when they would fill the limit.
        if let concurrency = limits.concurrency, leases.count >= concurrency { leases = leases.filter { $0.value > now } }

        var available = limits.burst
        if let rate = limits.ratePerSecond, let tokens {
            available = min(limits.burst, tokens + Double(max(0, now - tokensAt)) * rate / 1_000)
        }
        var used = 0
        var window: (id: Int64, start: Int64, end: Int64)?
        if limits.quota != nil {
            let current = QuotaWindowCalendar.window(limits.quotaWindow, at: now)
            window = current
            used = quotaWindowID == current.id ? quotaUsed : 0
        }

        var decision: AdmissionDecision
        if let quota = limits.quota, let window, used + 1 > quota {
            decision = AdmissionDecision(verdict: .quotaExceeded)
            decision.retryAfterMilliseconds = window.end - now
        } else if let rate = limits.ratePerSecond, available < Double(limits.cost) {
            decision = AdmissionDecision(verdict: .rateLimited)
            decision.retryAfterMilliseconds = Int64(((Double(limits.cost) - available) * 1_000 / rate).rounded(.up))
        } else if let concurrency = limits.concurrency, leases.count >= concurrency {
            decision = AdmissionDecision(verdict: .concurrencyLimited)
            decision.retryAfterMilliseconds = 1_000
        } else {
            decision = AdmissionDecision(verdict: .admitted)
            if limits.ratePerSecond != nil {
                available -= Double(limits.cost)
                tokens = available
                tokensAt = now
            }
            if let window {
                used += 1
                quotaWindowID = window.id
                quotaUsed = used
            }
            if limits.concurrency != nil, let lease { leases[lease] = now + leaseMilliseconds }
        }

        if let rate = limits.ratePerSecond {
            decision.tokensRemaining = Int(max(0, available).rounded(.down))
            decision.bucketFullInMilliseconds = Int64(((limits.burst - max(0, available)) * 1_000 / rate).rounded(.up))
        }
        if let quota = limits.quota, let window {
            decision.quotaRemaining = max(0, quota - used)
            decision.quotaResetInMilliseconds = window.end - now
            decision.quotaWindowMilliseconds = window.end - window.start
        }
        return decision
    }

    /// Extends leases still held (by a live gateway) to `now + leaseMilliseconds`.
    public mutating func renew(_ held: some Sequence<String>, leaseMilliseconds: Int64, now: Int64) {
        for lease in held where leases[lease] != nil { leases[lease] = now + leaseMilliseconds }
    }

    public mutating func release(_ lease: String) {
        leases[lease] = nil
    }
}
