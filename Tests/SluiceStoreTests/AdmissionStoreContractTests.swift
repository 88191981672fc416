import SluiceCore
@testable import SluiceStore
import Testing
import TestSupport

/// Every store keeps the same admission contract; each test runs against the embedded store and
/// real Redis, with the manual clock far in the past, at real time and far in the future.
struct AdmissionStoreContractTests {
    private let lease: Duration = .seconds(30)

    /// A full bucket admits `burst` requests at once, refuses the next with the wait for one token, then refills.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func bucketBurstsThenRefills(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let l = limits(rate: 2, burst: 3)
            for remaining in [2, 1, 0] {
                let decision = try await store.admit(partner: "acme", limits: l, lease: nil, leaseDuration: lease)
                #expect(decision.verdict == .admitted && decision.tokensRemaining == remaining)
            }
            let refused = try await store.admit(partner: "acme", limits: l, lease: nil, leaseDuration: lease)
            #expect(refused.verdict == .rateLimited && refused.retryAfterMilliseconds == 500 && refused.tokensRemaining == 0)
            clock.advance(500)
            let refilled = try await store.admit(partner: "acme", limits: l, lease: nil, leaseDuration: lease)
            #expect(refilled.verdict == .admitted && refilled.bucketFullInMilliseconds == 1_500)
        }
    }

    /// A costly route takes several tokens; its refusal costs nothing.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func costTakesSeveralTokens(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let expensive = limits(rate: 1, burst: 10, cost: 5)
            #expect(try await store.admit(partner: "acme", limits: expensive, lease: nil, leaseDuration: lease).tokensRemaining == 5)
            #expect(try await store.admit(partner: "acme", limits: expensive, lease: nil, leaseDuration: lease).tokensRemaining == 0)
            clock.advance(2_000)
            let refused = try await store.admit(partner: "acme", limits: expensive, lease: nil, leaseDuration: lease)
            #expect(refused.verdict == .rateLimited && refused.retryAfterMilliseconds == 3_000)
            let cheap = try await store.admit(partner: "acme", limits: limits(rate: 1, burst: 10), lease: nil, leaseDuration: lease)
            #expect(cheap.verdict == .admitted && cheap.tokensRemaining == 1)
        }
    }

    /// A daily quota refuses with the time to midnight UTC and starts over in the next window; so does a monthly one.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func quotaRollsOver(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let daily = limits(quota: 2)
            let day = UTCCalendarOracle.window(.day, containing: clock.now)
            clock.set(day.end - 5_000)
            #expect(try await store.admit(partner: "acme", limits: daily, lease: nil, leaseDuration: lease).quotaRemaining == 1)
            #expect(try await store.admit(partner: "acme", limits: daily, lease: nil, leaseDuration: lease).quotaRemaining == 0)
            let refused = try await store.admit(partner: "acme", limits: daily, lease: nil, leaseDuration: lease)
            #expect(refused.verdict == .quotaExceeded && refused.retryAfterMilliseconds == 5_000)
            #expect(refused.quotaWindowMilliseconds == Int64(86_400_000))
            clock.set(day.end)
            #expect(try await store.admit(partner: "acme", limits: daily, lease: nil, leaseDuration: lease).verdict == .admitted)

            let monthly = limits(quota: 1, per: .month)
            let month = UTCCalendarOracle.window(.month, containing: clock.now)
            clock.set(month.end - 1)
            #expect(try await store.admit(partner: "globex", limits: monthly, lease: nil, leaseDuration: lease).verdict == .admitted)
            let monthRefused = try await store.admit(partner: "globex", limits: monthly, lease: nil, leaseDuration: lease)
            #expect(monthRefused.verdict == .quotaExceeded && monthRefused.retryAfterMilliseconds == 1)
            #expect(monthRefused.quotaWindowMilliseconds == month.end - month.start)
            clock.set(month.end)
            #expect(try await store.admit(partner: "globex", limits: monthly, lease: nil, leaseDuration: lease).verdict == .admitted)
        }
    }

    /// A rate refusal costs no quota.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func refusalsCostNoQuota(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let l = limits(rate: 1, burst: 1, quota: 5)
            let first = try await store.admit(partner: "acme", limits: l, lease: nil, leaseDuration: lease)
            #expect(first.quotaRemaining == 4)
            for _ in 0..<3 {
                let refused = try await store.admit(partner: "acme", limits: l, lease: nil, leaseDuration: lease)
                #expect(refused.verdict == .rateLimited && refused.quotaRemaining == 4)
            }
            clock.advance(1_000)
            let next = try await store.admit(partner: "acme", limits: l, lease: nil, leaseDuration: lease)
            #expect(next.quotaRemaining == 3)
        }
    }

    /// Leases cap concurrency; a release frees the slot; a lease nobody renews expires; renewal keeps it.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func leasesCapConcurrency(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let l = limits(concurrency: 2)
            let short: Duration = .seconds(10)
            #expect(try await store.admit(partner: "acme", limits: l, lease: "a", leaseDuration: short).verdict == .admitted)
            #expect(try await store.admit(partner: "acme", limits: l, lease: "b", leaseDuration: short).verdict == .admitted)
            let full = try await store.admit(partner: "acme", limits: l, lease: "c", leaseDuration: short)
            #expect(full.verdict == .concurrencyLimited && full.retryAfterMilliseconds == 1_000)
            store.release(partner: "acme", lease: "a")
            #expect(try await store.admit(partner: "acme", limits: l, lease: "c", leaseDuration: short).verdict == .admitted)
            clock.advance(9_000)
            try await store.renew(partner: "acme", leases: ["b"], leaseDuration: short)
            clock.advance(1_000)  // c (taken at 0) has expired, b was renewed until 19 s
            #expect(try await store.admit(partner: "acme", limits: l, lease: "d", leaseDuration: short).verdict == .admitted)
            #expect(try await store.admit(partner: "acme", limits: l, lease: "e", leaseDuration: short).verdict == .concurrencyLimited)
        }
    }

    /// Queued releases are applied by flushReleases even without another admission.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func flushAppliesQueuedReleases(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let l = limits(concurrency: 1)
            #expect(try await store.admit(partner: "acme", limits: l, lease: "a", leaseDuration: lease).verdict == .admitted)
            store.release(partner: "acme", lease: "a")
            try await store.flushReleases()
            #expect(try await store.admit(partner: "acme", limits: l, lease: "b", leaseDuration: lease).verdict == .admitted)
        }
    }

    /// Partners have separate buckets.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func partnersAreIndependent(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let l = limits(rate: 1, burst: 1)
            #expect(try await store.admit(partner: "acme", limits: l, lease: nil, leaseDuration: lease).verdict == .admitted)
            #expect(try await store.admit(partner: "acme", limits: l, lease: nil, leaseDuration: lease).verdict == .rateLimited)
            #expect(try await store.admit(partner: "globex", limits: l, lease: nil, leaseDuration: lease).verdict == .admitted)
        }
    }

    /// Many concurrent callers (pipelined on Redis) never get more than the bucket holds.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func concurrentCallersShareOneBucket(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let l = limits(rate: 0.001, burst: 100)
            let admitted = try await withThrowingTaskGroup(of: Bool.self) { group in
                for _ in 0..<500 {
                    group.addTask { try await store.admit(partner: "acme", limits: l, lease: nil, leaseDuration: .seconds(30)).verdict == .admitted }
                }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
            #expect(admitted == 100)
        }
    }
}

extension AdmissionStoreContractTests {
    /// Concurrent requests of mixed cost (decided in batches on Redis) spend the bucket exactly
    /// and never hold more leases than the concurrency limit.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func concurrentMixedCostsSpendTheBucketExactly(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let outcomes = try await withThrowingTaskGroup(of: (cost: Int, verdict: AdmissionVerdict).self) { group in
                for index in 0..<300 {
                    let cost = 1 + index % 3
                    group.addTask {
                        let decision = try await store.admit(
                            partner: "acme", limits: limits(rate: 0.001, burst: 100, concurrency: 40, cost: cost), lease: "l\(index)",
                            leaseDuration: .seconds(30)
                        )
                        return (cost, decision.verdict)
                    }
                }
                return try await group.reduce(into: [(cost: Int, verdict: AdmissionVerdict)]()) { $0.append($1) }
            }
            let admitted = outcomes.filter { $0.verdict == .admitted }
            #expect(admitted.count <= 40)
            let spent = admitted.reduce(0) { $0 + $1.cost }
            #expect(spent <= 100)
            #expect(admitted.count == 40 || spent > 97, "admission stopped early: \(admitted.count) admitted, \(spent) tokens spent")
        }
    }
}

struct AdmissionScriptEquivalenceTests {
    /// The Lua script and the Swift ledger decide identically over a long random sequence.
    @Test(arguments: ClockEpoch.allCases)
    func redisAndMemoryDecideAlike(_ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        var random = SystemRandomNumberGenerator()
        let memory = MemoryStore(clock: clock.epochClock)
        try await withStore(.redis, clock: clock) { redis in
            let options = [
                limits(rate: 3, burst: 5, quota: 40, concurrency: 3),
                limits(rate: 0.5, burst: 2, cost: 2),
                limits(quota: 7, per: .month, concurrency: 2),
                limits(rate: 7.5, burst: 20, quota: 100, cost: 3),
            ]
            var held: [String] = []
            for step in 0..<400 {
                clock.advance(Int64.random(in: 0...900, using: &random))
                if !held.isEmpty && Bool.random(using: &random) {
                    let lease = held.remove(at: Int.random(in: 0..<held.count, using: &random))
                    memory.release(partner: "p", lease: lease)
                    redis.release(partner: "p", lease: lease)
                }
                let choice = options[Int.random(in: 0..<options.count, using: &random)]
                let lease = "l\(step)"
                let expected = try await memory.admit(partner: "p", limits: choice, lease: lease, leaseDuration: .seconds(5))
                let actual = try await redis.admit(partner: "p", limits: choice, lease: lease, leaseDuration: .seconds(5))
                #expect(actual == expected, "step \(step)")
                if expected.verdict == .admitted { held.append(lease) }
                if actual != expected { break }
            }
        }
    }
}
