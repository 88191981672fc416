import SluiceCore
@testable import SluiceStore
import Testing
import TestSupport

/// Every store keeps usage alike: batches add up, a batch id counts once, reads filter by days
/// and partner, and a day's counts are gone `retention` after it ends. Days are relative to
/// the real today (Redis expires keys by its own clock).
struct UsageStoreContractTests {
    private let retention: Duration = .seconds(30 * 86_400)

    private func counts(requests: Int64, latenciesMicroseconds: [Int64] = []) -> UsageCounts {
        var counts = UsageCounts()
        for index in 0..<Int(requests) {
            var event = UsageEvent(status: index % 2 == 0 ? 200 : 404, bytesIn: 10, bytesOut: 100, microseconds: 0)
            event.microseconds = latenciesMicroseconds.isEmpty ? 1_000 : latenciesMicroseconds[index % latenciesMicroseconds.count]
            counts.count(event)
        }
        return counts
    }

    @Test(arguments: StoreKind.allCases)
    func batchesAddUpAndReadBackByDayAndPartner(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        let today = UsageDay(epochMilliseconds: clock.now)
        try await withStore(kind, clock: clock) { store in
            let acmeToday = UsageKey(day: today, partner: "acme", version: "v2", route: "orders")
            let acmeYesterday = UsageKey(day: today.adding(days: -1), partner: "acme", version: "v1", route: "price")
            let globex = UsageKey(day: today, partner: "globex", version: "v2", route: "orders")
            try await store.addUsage([acmeToday: counts(requests: 3, latenciesMicroseconds: [900, 25_000, 4_000_000])], batchID: "b1", retention: retention)
            try await store.addUsage([acmeToday: counts(requests: 2), acmeYesterday: counts(requests: 1), globex: counts(requests: 5)], batchID: "b2", retention: retention)

            let all = try await store.usage(from: today.adding(days: -1), to: today, partner: nil)
            #expect(Set(all.keys) == [acmeToday, acmeYesterday, globex])
            var expected = counts(requests: 3, latenciesMicroseconds: [900, 25_000, 4_000_000])
            expected.merge(counts(requests: 2))
            #expect(all[acmeToday] == expected)
            #expect(all[acmeToday]?.status2xx == 3 && all[acmeToday]?.status4xx == 2 && all[acmeToday]?.bytesOut == 500)
            #expect(all[globex]?.requests == 5)

            #expect(Set(try await store.usage(from: today, to: today, partner: nil).keys) == [acmeToday, globex])
            #expect(Set(try await store.usage(from: today.adding(days: -1), to: today, partner: "acme").keys) == [acmeToday, acmeYesterday])
            #expect(try await store.usage(from: today.adding(days: -1), to: today, partner: "initech").isEmpty)
        }
    }

    /// A flush retried after an unknown outcome carries the same id: it is counted once.
    @Test(arguments: StoreKind.allCases)
    func aBatchIsCountedOnceByItsID(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        let today = UsageDay(epochMilliseconds: clock.now)
        try await withStore(kind, clock: clock) { store in
            let key = UsageKey(day: today, partner: "acme", version: "v2", route: "orders")
            try await store.addUsage([key: counts(requests: 4)], batchID: "same", retention: retention)
            try await store.addUsage([key: counts(requests: 4)], batchID: "same", retention: retention)
            #expect(try await store.usage(from: today, to: today, partner: "acme")[key]?.requests == 4)
            try await store.addUsage([key: counts(requests: 1)], batchID: "other", retention: retention)
            #expect(try await store.usage(from: today, to: today, partner: "acme")[key]?.requests == 5)
        }
    }

    /// Counts of a day that ended longer than the retention ago are not kept.
    @Test(arguments: StoreKind.allCases)
    func daysPastTheRetentionAreGone(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        let today = UsageDay(epochMilliseconds: clock.now)
        try await withStore(kind, clock: clock) { store in
            let old = UsageKey(day: today.adding(days: -10), partner: "acme", version: "v2", route: "orders")
            let recent = UsageKey(day: today.adding(days: -3), partner: "acme", version: "v2", route: "orders")
            try await store.addUsage([old: counts(requests: 1), recent: counts(requests: 2)], batchID: "b", retention: .seconds(5 * 86_400))
            let kept = try await store.usage(from: today.adding(days: -30), to: today, partner: nil)
            #expect(Set(kept.keys) == [recent])
        }
    }

    /// A batch larger than one script call's share still lands whole (Redis splits it).
    @Test(arguments: StoreKind.allCases)
    func largeBatchesLandWhole(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        let today = UsageDay(epochMilliseconds: clock.now)
        try await withStore(kind, clock: clock) { store in
            var batch: UsageBatch = [:]
            for partner in 0..<20 {
                for route in 0..<40 { batch[UsageKey(day: today, partner: "p\(partner)", version: "v1", route: "r\(route)")] = counts(requests: 2) }
            }
            try await store.addUsage(batch, batchID: "big", retention: retention)
            try await store.addUsage(batch, batchID: "big", retention: retention)
            let read = try await store.usage(from: today, to: today, partner: nil)
            #expect(read.count == 800)
            #expect(read.values.allSatisfy { $0 == counts(requests: 2) })
        }
    }
}
