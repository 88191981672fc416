import Testing
@testable import SluiceCore

/// `canary:` on a route (SPEC §7): which partners go to it, and when it is given up.
struct CanarySplitTests {
    private func getOrder() throws -> Route {
        try #require(GatewayRules(try PolicyFixtures.load()).routes["get-order"])
    }

    @Test func theFixturesCanaryIsRead() throws {
        let policy = try PolicyFixtures.load()
        let canary = try #require(policy.routes.routes.first { $0.id == "get-order" }?.canary)
        #expect(canary.upstream == "pricing" && canary.share == 0.1 && canary.partners == ["acme"])
        #expect(canary.abortOn == .init(errorRate: 0.25, minCalls: 4))
        #expect(policy.routes.routes.first { $0.id == "price" }?.canary == nil)
    }

    @Test func aListedPartnerIsOnTheCanaryAndTheTimeoutIsItsUpstreams() throws {
        let route = try getOrder()
        let (upstream, canary) = route.upstream(for: "acme")
        #expect(upstream.name == "pricing" && canary === route.canary)
        #expect(route.requestTimeout(on: upstream) == upstream.requestTimeout)
    }

    @Test func theShareIsStableAndGrowsWithoutMovingAnybodyOff() throws {
        let upstream = try #require(try PolicyFixtures.load().upstreams["shop"])
        func split(_ share: Double) -> CanarySplit {
            CanarySplit(RoutePolicy.Canary(upstream: "shop", share: share, partners: [], partnerLocations: [], abortOn: nil), upstream: upstream)
        }
        let partners = (0..<10_000).map { "partner-\($0)" }
        let five = Set(partners.filter { split(0.05).takes(partner: $0) })
        let ten = Set(partners.filter { split(0.10).takes(partner: $0) })
        #expect((450...550).contains(five.count), "5 %: \(five.count) of 10 000")
        #expect((900...1_100).contains(ten.count), "10 %: \(ten.count) of 10 000")
        #expect(five.isSubset(of: ten))
        #expect(partners.allSatisfy { !split(0).takes(partner: $0) })
        #expect(partners.allSatisfy { split(1).takes(partner: $0) })
        // The bucket is FNV-based, not Swift's per-process seeded hash: every instance agrees.
        #expect(CanarySplit.bucket(of: "acme") == StableHash.of("acme") % 10_000)
        #expect(StableHash.of("acme") == 0x130a_7622_2d44_27ef)
    }

    @Test func theWindowAbortsAboveTheErrorRateOnceFull() {
        var window = OutcomeWindow(size: 4, limit: 0.25)
        // Not full for three; 1 of 4 is 25 %, not above it; the first failure leaves; 2 of the last 4.
        let exceeded = [true, false, false, false, false, true, true].map { window.record(failed: $0) }
        #expect(exceeded == [false, false, false, false, false, false, true])
    }

    @Test func anAbortSendsEveryoneBackUntilANewSplit() throws {
        let route = try getOrder()
        let canary = try #require(route.canary)
        #expect(canary.takes(partner: "acme"))
        let aborted = [true, true, false, true, true].map { canary.record(failed: $0) }
        #expect(aborted == [false, false, false, true, false], "aborted once, by the call that passed the rate")
        #expect(canary.isAborted && !canary.takes(partner: "acme"))
        #expect(route.upstream(for: "acme").upstream.name == "orders")
        // A reload builds new rules: the canary is back.
        #expect(try getOrder().canary?.takes(partner: "acme") == true)
    }
}
