import Testing
import TestSupport
@testable import SluiceCore

struct QuotaWindowTests {
    private let nov22 = Int64(1_795_305_600_000)  // 2026-11-22T00:00:00Z

    /// Day windows run from UTC midnight to UTC midnight.
    @Test func dayWindows() {
        let window = QuotaWindowCalendar.window(.day, at: nov22 + 3_600_000)
        #expect(window.start == nov22 && window.end == nov22 + 86_400_000)
        #expect(QuotaWindowCalendar.window(.day, at: nov22 - 1).id == window.id - 1)
    }

    /// Month windows follow the calendar, including February of a leap year and year ends.
    @Test func monthWindows() {
        let november = QuotaWindowCalendar.window(.month, at: nov22)
        #expect(november.start == 1_793_491_200_000)  // 2026-11-01
        #expect(november.end == 1_796_083_200_000)  // 2026-12-01
        let december = QuotaWindowCalendar.window(.month, at: november.end)
        #expect(december.id == november.id + 1 && december.end == 1_798_761_600_000)  // 2027-01-01
        let leapFebruary = QuotaWindowCalendar.window(.month, at: 1_709_251_199_999)  // 2024-02-29T23:59:59.999Z
        #expect((leapFebruary.end - leapFebruary.start) == 29 * 86_400_000)
        #expect(QuotaWindowCalendar.civil(fromDays: 0) == (1970, 1, 1))
        #expect(QuotaWindowCalendar.days(fromCivil: 2000, 3, 1) == 11_017)
    }
}

struct PartnerLedgerTests {
    /// A full bucket allows `burst` requests at once, then refills at `per_second`.
    @Test func bucketBurstsThenRefills() {
        var ledger = PartnerLedger()
        let l = limits(rate: 2, burst: 3)
        for _ in 0..<3 { #expect(ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: 0).verdict == .admitted) }
        let refused = ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: 0)
        #expect(refused.verdict == .rateLimited && refused.retryAfterMilliseconds == 500)
        #expect(ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: 499).verdict == .rateLimited)
        let later = ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: 500)
        #expect(later.verdict == .admitted && later.tokensRemaining == 0)
        #expect(later.bucketFullInMilliseconds == 1_500)
        #expect(ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: 60_000).tokensRemaining == 2)  // capped at burst
    }

    /// A route's cost takes that many tokens; refusal costs nothing and says when that many are back.
    @Test func costTakesSeveralTokens() {
        var ledger = PartnerLedger()
        let expensive = limits(rate: 1, burst: 10, cost: 5)
        #expect(ledger.admit(expensive, lease: nil, leaseMilliseconds: 0, now: 0).tokensRemaining == 5)
        #expect(ledger.admit(expensive, lease: nil, leaseMilliseconds: 0, now: 0).tokensRemaining == 0)
        let refused = ledger.admit(expensive, lease: nil, leaseMilliseconds: 0, now: 2_000)
        #expect(refused.verdict == .rateLimited && refused.retryAfterMilliseconds == 3_000 && refused.tokensRemaining == 2)
        #expect(ledger.admit(limits(rate: 1, burst: 10), lease: nil, leaseMilliseconds: 0, now: 2_000).tokensRemaining == 1)
    }

    /// Partner overrides replace the plan's parts.
    @Test func overridesReplacePlanParts() {
        let plan = LimitSet(rate: .init(perSecond: 50, burst: 100), quota: .init(requests: 1_000, per: .day), concurrency: 20)
        let effective = plan.applying(LimitSet(rate: .init(perSecond: 100, burst: 200)))
        #expect(effective.rate == .init(perSecond: 100, burst: 200))
        #expect(effective.quota == plan.quota && effective.concurrency == 20)
    }

    /// The quota counts admitted requests per window and resets when the window rolls over.
    @Test func quotaRollsOverWithTheWindow() {
        var ledger = PartnerLedger()
        let l = limits(quota: 2)
        let day = QuotaWindowCalendar.dayMilliseconds
        #expect(ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: day - 10).quotaRemaining == 1)
        #expect(ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: day - 9).quotaRemaining == 0)
        let refused = ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: day - 8)
        #expect(refused.verdict == .quotaExceeded && refused.retryAfterMilliseconds == 8)
        #expect(ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: day).verdict == .admitted)
    }

    /// A refusal for rate costs no quota, and a refusal for quota costs no tokens.
    @Test func refusalsCostNothing() {
        var ledger = PartnerLedger()
        let l = limits(rate: 1, burst: 1, quota: 5)
        #expect(ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: 0).quotaRemaining == 4)
        #expect(ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: 0).verdict == .rateLimited)
        #expect(ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: 1_000).quotaRemaining == 3)
    }

    /// Leases cap concurrency; releasing or expiring frees the slot; renewal keeps it.
    @Test func leasesCapConcurrency() {
        var ledger = PartnerLedger()
        let l = limits(concurrency: 2)
        #expect(ledger.admit(l, lease: "a", leaseMilliseconds: 1_000, now: 0).verdict == .admitted)
        #expect(ledger.admit(l, lease: "b", leaseMilliseconds: 1_000, now: 0).verdict == .admitted)
        #expect(ledger.admit(l, lease: "c", leaseMilliseconds: 1_000, now: 0).verdict == .concurrencyLimited)
        ledger.release("a")
        #expect(ledger.admit(l, lease: "c", leaseMilliseconds: 1_000, now: 0).verdict == .admitted)
        ledger.renew(["b"], leaseMilliseconds: 1_000, now: 900)
        #expect(ledger.admit(l, lease: "d", leaseMilliseconds: 1_000, now: 1_000).verdict == .admitted)  // c expired, b renewed
        #expect(ledger.admit(l, lease: "e", leaseMilliseconds: 1_000, now: 1_000).verdict == .concurrencyLimited)
    }

    /// The local fallback divides rate, burst and concurrency among instances and skips quotas.
    @Test func localShareDividesLimits() {
        let set = LimitSet(rate: .init(perSecond: 50, burst: 100), quota: .init(requests: 1_000, per: .day), concurrency: 20)
        let local = AdmissionLimits(set, cost: 1, localShareOf: 4)
        #expect(local.ratePerSecond == 12.5 && local.burst == 25 && local.concurrency == 5 && local.quota == nil)
        #expect(AdmissionLimits(set, cost: 1, localShareOf: 1).quota == nil)
        #expect(AdmissionLimits(set, cost: 1).quota == 1_000)
    }
}

struct RateLimitHeaderTests {
    /// The policy lists bucket and quota; the state shows the policy closest to exhaustion.
    @Test func headersDescribePoliciesAndState() {
        let l = AdmissionLimits(LimitSet(rate: .init(perSecond: 50, burst: 100), quota: .init(requests: 1_000, per: .day)), cost: 1)
        var ledger = PartnerLedger()
        let decision = ledger.admit(l, lease: nil, leaseMilliseconds: 0, now: 43_200_000)  // noon
        #expect(RateLimitHeaders.policy(l, decision) == #""rate";q=100;w=2, "quota";q=1000;w=86400"#)
        #expect(RateLimitHeaders.state(l, decision) == #""rate";r=99;t=1"#)
        var almostDone = PartnerLedger()
        let quotaFirst = AdmissionLimits(LimitSet(rate: .init(perSecond: 50, burst: 100), quota: .init(requests: 2, per: .day)), cost: 1)
        let second = almostDone.admit(quotaFirst, lease: nil, leaseMilliseconds: 0, now: 43_200_000)
        #expect(RateLimitHeaders.state(quotaFirst, second) == #""quota";r=1;t=43200"#)
    }

    /// Retry-After is whole seconds, rounded up, and never 0.
    @Test func retryAfterRoundsUp() {
        var decision = AdmissionDecision(verdict: .rateLimited)
        decision.retryAfterMilliseconds = 1
        #expect(RateLimitHeaders.retryAfter(decision) == 1)
        decision.retryAfterMilliseconds = 1_001
        #expect(RateLimitHeaders.retryAfter(decision) == 2)
        decision.retryAfterMilliseconds = 0
        #expect(RateLimitHeaders.retryAfter(decision) == 1)
    }
}
