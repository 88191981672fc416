import Foundation
import Testing
@testable import SluiceCore

/// `targets:`, `balancer:`, `health:` and `panic_threshold:` (SPEC §7) as the policy reads them.
struct UpstreamPoolPolicyTests {
    @Test func targetsAndHealthDecode() throws {
        let shop = try #require(try PolicyFixtures.load().upstreams["shop"])
        #expect(shop.targets.map(\.address.description) == ["http://127.0.0.1:9103", "http://127.0.0.2:9103"])
        #expect(shop.targets.map(\.weight) == [2, 1])
        #expect(shop.dnsRefresh == .seconds(10))
        #expect(shop.balancer == .partnerHash)
        let active = try #require(shop.health.active)
        #expect(active.path == "/healthz" && active.interval == .seconds(2) && active.timeout == .milliseconds(500))
        #expect(active.healthy == 1 && active.unhealthy == 2)
        #expect(shop.health.passive.consecutiveFailures == 3 && shop.health.passive.ejection == .seconds(10))
        #expect(shop.health.passive.maxEjection == .seconds(60) && shop.health.passive.maxEjected == 0.34)
        #expect(shop.panicThreshold == 0.25)
    }

    /// `url:` is one target of weight 1, least_request, no probes, the passive defaults.
    @Test func urlIsTheOneTargetShorthand() throws {
        let orders = try #require(try PolicyFixtures.load().upstreams["orders"])
        #expect(orders.targets.map(\.weight) == [1])
        #expect(orders.balancer == .leastRequest && orders.health.active == nil)
        #expect(orders.health.passive == UpstreamPolicy.Health.Passive())
        #expect(orders.panicThreshold == 0.5)
    }
}

/// The balancers as pure functions, with fixed seeds.
struct BalancerTests {
    private static let weights = [3, 1, 1]

    /// An idle pool follows the weights (3:1:1 within 3 percentage points over 50,000 picks).
    @Test func leastRequestFollowsWeightsWhenIdle() {
        var random = SplitMix64(seed: 42)
        var counts = [0, 0, 0]
        for _ in 0..<50_000 {
            counts[BalancerRules.leastRequest(.all(3), weights: Self.weights, inFlight: { _ in 0 }, using: &random)!] += 1
        }
        let shares = counts.map { Double($0) / 50_000 }
        #expect(abs(shares[0] - 0.6) < 0.03 && abs(shares[1] - 0.2) < 0.03 && abs(shares[2] - 0.2) < 0.03, "\(shares)")
    }

    /// A loaded target is avoided: with two choices the busier one loses.
    @Test func leastRequestAvoidsTheBusyTarget() {
        var random = SplitMix64(seed: 7)
        var counts = [0, 0, 0]
        let inFlight = [40, 0, 0]
        for _ in 0..<10_000 {
            counts[BalancerRules.leastRequest(.all(3), weights: [1, 1, 1], inFlight: { inFlight[$0] }, using: &random)!] += 1
        }
        // Target 0 wins only when drawn twice — which two distinct draws never do.
        #expect(counts[0] == 0 && counts[1] + counts[2] == 10_000)
    }

    @Test func leastRequestKeepsToTheEligible() {
        var random = SplitMix64(seed: 1)
        var eligible = TargetSet.all(3)
        eligible.remove(0)
        for _ in 0..<1_000 { #expect(BalancerRules.leastRequest(eligible, weights: Self.weights, inFlight: { _ in 0 }, using: &random) != 0) }
        #expect(BalancerRules.leastRequest(TargetSet(), weights: Self.weights, inFlight: { _ in 0 }, using: &random) == nil)
    }

    /// Latencies within `markedlySlower` of each other change nothing: the idle pool still follows the weights.
    @Test func leastRequestIgnoresSmallLatencyDifferences() {
        var random = SplitMix64(seed: 42)
        var counts = [0, 0, 0]
        let latency = [1_000_000, 2_000_000, 2_900_000].map { LatencyEstimate(nanoseconds: $0, low: $0, sampledAt: 0) }
        for _ in 0..<50_000 {
            counts[BalancerRules.leastRequest(.all(3), weights: Self.weights, inFlight: { _ in 0 }, latency: { latency[$0] }, now: { 0 }, using: &random)!] += 1
        }
        let shares = counts.map { Double($0) / 50_000 }
        #expect(abs(shares[0] - 0.6) < 0.03 && abs(shares[1] - 0.2) < 0.03 && abs(shares[2] - 0.2) < 0.03, "\(shares)")
    }

    /// A target 10× slower takes a call only when the other has about 10² times its calls in
    /// flight (each counting the new call): at 20 against 0 it gets none, at 120 against 0 it
    /// wins every draw it is in.
    @Test func leastRequestAvoidsAMarkedlySlowerTarget() {
        let latency = [1_000_000, 1_000_000, 10_000_000].map { LatencyEstimate(nanoseconds: $0, low: $0, sampledAt: 0) }
        for (busy, slowWins) in [(20, false), (120, true)] {
            var random = SplitMix64(seed: 9)
            var counts = [0, 0, 0]
            let inFlight = [busy, busy, 0]
            for _ in 0..<9_000 {
                counts[BalancerRules.leastRequest(.all(3), weights: [1, 1, 1], inFlight: { inFlight[$0] }, latency: { latency[$0] }, now: { 0 }, using: &random)!] += 1
            }
            // Two of the three pairs hold the slow target.
            if slowWins { #expect(abs(Double(counts[2]) / 9_000 - 2.0 / 3) < 0.03, "\(counts)") } else { #expect(counts[2] == 0, "\(counts)") }
        }
    }

    /// A slow target's estimate fades while it gets no calls: ten seconds later (10 ms → 1.4 ms)
    /// it is no longer markedly slower and takes its share again.
    @Test func aSlowTargetIsTriedAgainOnceItsEstimateFades() {
        let latency = [LatencyEstimate(nanoseconds: 1_000_000, low: 1_000_000, sampledAt: 10_000_000_000), LatencyEstimate(nanoseconds: 10_000_000, low: 10_000_000, sampledAt: 0)]
        var random = SplitMix64(seed: 3)
        var counts = [0, 0]
        for _ in 0..<1_000 {
            counts[BalancerRules.leastRequest(.all(2), weights: [1, 1], inFlight: { [3, 0][$0] }, latency: { latency[$0] }, now: { 10_000_000_000 }, using: &random)!] += 1
        }
        #expect(counts == [0, 1_000])
        var early = SplitMix64(seed: 3)
        let soon = BalancerRules.leastRequest(.all(2), weights: [1, 1], inFlight: { [3, 0][$0] }, latency: { latency[$0] }, now: { 500_000_000 }, using: &early)
        #expect(soon == 0)
    }

    @Test func latencyEstimateMovesATwentiethPerSampleAndFades() {
        var estimate = LatencyEstimate.none.adding(sample: 1_000_000, at: 0)
        #expect(estimate.nanoseconds == 1_000_000 && estimate.low == 1_000_000)
        estimate = estimate.adding(sample: 4_000_000, at: 0)
        estimate = estimate.adding(sample: 4_000_000, at: 0)
        #expect(estimate.nanoseconds == 1_292_500)
        estimate = LatencyEstimate.none.adding(sample: 1_000_000, at: 0).adding(sample: 21_000_000, at: 0)
        #expect(estimate.nanoseconds == 1_150_000, "a sample over 4× the average counts as 4×")
        #expect(abs(estimate.faded(at: 5_000_000_000) - 1_150_000 * exp(-1.0)) < 1)
        #expect(estimate.faded(at: -5) == 1_150_000)
        #expect(LatencyEstimate.none.adding(sample: -3, at: 0).nanoseconds == 1)
    }

    /// One pause of 300 ms among 5-ms answers does not make a target markedly slower than its
    /// 5-ms peers; a target whose answers turn 10× slower is markedly slower after 20 of them.
    @Test func oneSlowAnswerIsNotASlowTarget() {
        var paused = LatencyEstimate.none
        for _ in 0..<50 { paused = paused.adding(sample: 5_000_000, at: 0) }
        let peer = paused
        paused = paused.adding(sample: 300_000_000, at: 0)
        #expect(BalancerRules.slowdown(paused.faded(at: 0), against: peer.faded(at: 0), low: peer.low) < 1.2)
        var slower = peer
        for _ in 0..<20 { slower = slower.adding(sample: 50_000_000, at: 0) }
        #expect(BalancerRules.slowdown(slower.faded(at: 0), against: peer.faded(at: 0), low: peer.low) > BalancerRules.markedlySlower)
    }

    /// The lower envelope goes half way down toward a faster answer and a sixty-fourth up
    /// toward a slower one: answers of 1 ms with 0–16 ms of queueing on top keep it near the
    /// low end, while the average sits in the middle.
    @Test func latencyEnvelopeStaysNearTheFastAnswers() {
        var estimate = LatencyEstimate.none.adding(sample: 4_000_000, at: 0)
        estimate = estimate.adding(sample: 2_000_000, at: 0)
        #expect(estimate.low == 3_000_000)
        estimate = estimate.adding(sample: 67_000_000, at: 0)
        #expect(estimate.low == 4_000_000)
        var random = SplitMix64(seed: 5)
        var queued = LatencyEstimate.none
        for _ in 0..<5_000 { queued = queued.adding(sample: 1_000_000 + Int(random.next() % 16_000_000), at: 0) }
        #expect(queued.low < 6_000_000 && (6_000_000...12_000_000).contains(queued.nanoseconds), "\(queued)")
    }

    /// Queueing in the gateway adds alike to every target's answers: a 10-ms target next to
    /// 1-ms ones stays markedly slower with 8 ms of queueing on all (averages 9 and 18 ms, a
    /// plain ratio of 2), because the difference of the averages is weighed against the
    /// faster one's envelope.
    @Test func leastRequestSeesASlowerTargetThroughTheGatewaysQueueing() {
        #expect(BalancerRules.slowdown(18_000_000, against: 9_000_000, low: 1_500_000) == 7)
        #expect(BalancerRules.slowdown(9_000_000, against: 18_000_000, low: 11_000_000) == 1)
        #expect(BalancerRules.slowdown(2_000_000, against: 1_000_000, low: 3_000_000) == 2, "the envelope counts at most as the average")
        let latency = [
            LatencyEstimate(nanoseconds: 9_000_000, low: 1_500_000, sampledAt: 0), LatencyEstimate(nanoseconds: 9_000_000, low: 1_500_000, sampledAt: 0),
            LatencyEstimate(nanoseconds: 18_000_000, low: 11_000_000, sampledAt: 0),
        ]
        var random = SplitMix64(seed: 9)
        var counts = [0, 0, 0]
        let inFlight = [20, 20, 0]
        for _ in 0..<9_000 {
            counts[BalancerRules.leastRequest(.all(3), weights: [1, 1, 1], inFlight: { inFlight[$0] }, latency: { latency[$0] }, now: { 0 }, using: &random)!] += 1
        }
        #expect(counts[2] == 0, "\(counts)")
    }

    /// Smooth: weights 5, 1, 1 interleave instead of running five in a row.
    @Test func roundRobinIsSmoothAndWeighted() {
        var balancer = SmoothRoundRobin(count: 3)
        let picks = (0..<7).map { _ in balancer.pick(.all(3), weights: [5, 1, 1])! }
        #expect(picks == [0, 0, 1, 0, 2, 0, 0])
        var fair = SmoothRoundRobin(count: 3)
        var counts = [0, 0, 0]
        for _ in 0..<700 { counts[fair.pick(.all(3), weights: [5, 1, 1])!] += 1 }
        #expect(counts == [500, 100, 100])
        var skipping = SmoothRoundRobin(count: 3)
        var eligible = TargetSet.all(3)
        eligible.remove(0)
        #expect((0..<4).map { _ in skipping.pick(eligible, weights: [5, 1, 1])! } == [1, 2, 1, 2])
    }

    /// A partner sticks to one target; losing a target moves only that target's partners, and
    /// the spread follows the weights.
    @Test func partnerHashIsStickyAndConsistent() {
        let hashes = ["http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80"].map(StableHash.of)
        let partners = (0..<3_000).map { StableHash.of("partner-\($0)") }
        let before = partners.map { BalancerRules.partnerHash(.all(3), weights: [2, 1, 1], targetHashes: hashes, partner: $0)! }
        #expect(partners.map { BalancerRules.partnerHash(.all(3), weights: [2, 1, 1], targetHashes: hashes, partner: $0)! } == before)
        let onFirst = Double(before.filter { $0 == 0 }.count) / 3_000
        #expect(abs(onFirst - 0.5) < 0.04, "\(onFirst)")
        var withoutLast = TargetSet.all(3)
        withoutLast.remove(2)
        for (partner, target) in zip(partners, before) {
            let after = BalancerRules.partnerHash(withoutLast, weights: [2, 1, 1], targetHashes: hashes, partner: partner)!
            if target != 2 { #expect(after == target) } else { #expect(after != 2) }
        }
    }

    /// The hash is the same in every process (fixed values, not Swift's seeded `Hasher`).
    @Test func stableHashIsFixed() {
        #expect(StableHash.of("acme") == 0x130a_7622_2d44_27ef)
        #expect(StableHash.of("globex") == 0xe5de_fa41_dee8_c0a7)
    }
}
