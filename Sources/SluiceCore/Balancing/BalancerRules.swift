import Foundation

/// How a call picks one of the eligible targets (SPEC §7 `balancer`). Pure functions over
/// positions, weights and in-flight counts; the gateway keeps the state.
public enum BalancerRules {
    /// `least_request`: two targets drawn at random in proportion to their weights; the one with
    /// fewer calls in flight per unit of weight wins (ties: the first drawn). Idle pools so
    /// follow the weights, busy ones drain toward the least loaded target.
    public static func leastRequest(
        _ eligible: TargetSet, weights: [Int], inFlight: (Int) -> Int, using random: inout some RandomNumberGenerator
    ) -> Int? {
        guard let first = weightedDraw(eligible, weights: weights, using: &random) else { return nil }
        var rest = eligible
        rest.remove(first)
        guard let second = weightedDraw(rest, weights: weights, using: &random) else { return first }
        // inFlight / weight, compared without division (idle targets tie: the weighted draw decides).
        let firstLoad = inFlight(first) * weights[second]
        let secondLoad = inFlight(second) * weights[first]
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
