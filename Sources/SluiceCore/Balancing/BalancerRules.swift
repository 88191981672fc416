import Foundation

/// How a call picks one of the eligible targets (SPEC §7 `balancer`). Pure functions over
/// positions, weights and in-flight counts; the gateway keeps the state.
public enum BalancerRules {
    /// A target whose latency estimate is more than this many times another's is markedly slower.
    public static let markedlySlower = 3.0

    /// `least_request`: two targets drawn at random in proportion to their weights; the one with
    /// fewer calls in flight per unit of weight wins (ties: the first drawn). Idle pools so
    /// follow the weights, busy ones drain toward the least loaded target. When one of the two
    /// is markedly slower (its faded latency estimate over `markedlySlower` times the other's),
    /// each side counts the new call too and the slower one's count is multiplied by the square
    /// of the latency ratio: a target 4× slower takes a call only when the other has about 16
    /// times its calls in flight. (The ratio alone is not enough: the answer times a gateway
    /// measures include its own queueing, which shrinks the ratio under load.)
    /// - Parameters:
    ///   - latency: A target's latency estimate (`LatencyEstimate.none` when not tracked).
    ///   - now: The clock the estimates were sampled on; read only when the estimates differ markedly.
    public static func leastRequest(
        _ eligible: TargetSet, weights: [Int], inFlight: (Int) -> Int, latency: (Int) -> LatencyEstimate = { _ in .none },
        now: () -> Int64 = { 0 }, using random: inout some RandomNumberGenerator
    ) -> Int? {
        guard let first = weightedDraw(eligible, weights: weights, using: &random) else { return nil }
        var rest = eligible
        rest.remove(first)
        guard let second = weightedDraw(rest, weights: weights, using: &random) else { return first }
        // inFlight / weight, compared without division (idle targets tie: the weighted draw decides).
        var firstLoad = Double(inFlight(first) * weights[second])
        var secondLoad = Double(inFlight(second) * weights[first])
        let firstLatency = latency(first)
        let secondLatency = latency(second)
        if firstLatency.isKnown, secondLatency.isKnown,
            Double(max(firstLatency.nanoseconds, secondLatency.nanoseconds)) > markedlySlower * Double(min(firstLatency.nanoseconds, secondLatency.nanoseconds))
        {
            let at = now()
            let firstFaded = max(firstLatency.faded(at: at), 1)
            let secondFaded = max(secondLatency.faded(at: at), 1)
            if firstFaded > markedlySlower * secondFaded {
                let ratio = firstFaded / secondFaded
                firstLoad = (firstLoad + Double(weights[second])) * ratio * ratio
                secondLoad += Double(weights[first])
            } else if secondFaded > markedlySlower * firstFaded {
                let ratio = secondFaded / firstFaded
                secondLoad = (secondLoad + Double(weights[first])) * ratio * ratio
                firstLoad += Double(weights[second])
            }
        }
        return secondLoad < firstLoad ? second : first
    }

    /// `partner_hash`: weighted rendezvous hashing — each eligible target scores
    /// `weight / -ln(u)` with `u` from the partner's and the target's hashes; the highest wins.
    /// A partner keeps its target while that target stays eligible, and losing a target moves
    /// only the partners that were on it.
    public static func partnerHash(_ eligible: TargetSet, weights: [Int], targetHashes: [UInt64], partner: UInt64) -> Int? {
        var best: Int?
        var bestScore = -Double.infinity
        for index in eligible {
            let u = StableHash.unitInterval(StableHash.combine(partner, targetHashes[index]))
            let score = Double(weights[index]) / -log(u)
            if score > bestScore {
                bestScore = score
                best = index
            }
        }
        return best
    }

    private static func weightedDraw(_ set: TargetSet, weights: [Int], using random: inout some RandomNumberGenerator) -> Int? {
        var total = 0
        for index in set { total += weights[index] }
        guard total > 0 else { return nil }
        var point = Int.random(in: 0..<total, using: &random)
        for index in set {
            point -= weights[index]
            if point < 0 { return index }
        }
        return nil
    }
}

/// `round_robin`: nginx's smooth weighted round robin — every pick adds each eligible target's
/// weight to its score and takes the highest, which then gives back the eligible total. Weights
/// 5, 1, 1 give a a b a c a a, never five a's in a row.
public struct SmoothRoundRobin: Sendable {
    private var scores: [Int]

    public init(count: Int) { scores = Array(repeating: 0, count: count) }

    public mutating func pick(_ eligible: TargetSet, weights: [Int]) -> Int? {
        if scores.count < weights.count { scores += Array(repeating: 0, count: weights.count - scores.count) }
        var best: Int?
        var total = 0
        for index in eligible {
            scores[index] += weights[index]
            total += weights[index]
            if best == nil || scores[index] > scores[best!] { best = index }
        }
        if let best { scores[best] -= total }
        return best
    }
}
