import Foundation

/// How a call picks one of the eligible targets (SPEC §7 `balancer`). Pure functions over
/// positions, weights and in-flight counts; the gateway keeps the state.
public enum BalancerRules {
    /// A target that answers more than this many times slower than another is markedly slower.
    public static let markedlySlower = 3.0

    /// `least_request`: two targets drawn at random in proportion to their weights; the one with
    /// fewer calls in flight per unit of weight wins (ties: the first drawn). Idle pools so
    /// follow the weights, busy ones drain toward the least loaded target. When one of the two
    /// is markedly slower (`slowdown` over `markedlySlower`), each side counts the new call too
    /// and the slower one's count is multiplied by the square of the slowdown: a target 4×
    /// slower takes a call only when the other has about 16 times its calls in flight.
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
            max(
                slowdown(Double(firstLatency.nanoseconds), against: Double(secondLatency.nanoseconds), low: secondLatency.low),
                slowdown(Double(secondLatency.nanoseconds), against: Double(firstLatency.nanoseconds), low: firstLatency.low)
            ) > markedlySlower
        {
            let at = now()
            let firstAverage = max(firstLatency.faded(at: at), 1)
            let secondAverage = max(secondLatency.faded(at: at), 1)
            let firstSlowdown = slowdown(firstAverage, against: secondAverage, low: secondLatency.low)
            let secondSlowdown = slowdown(secondAverage, against: firstAverage, low: firstLatency.low)
            if firstSlowdown > markedlySlower {
                firstLoad = (firstLoad + Double(weights[second])) * firstSlowdown * firstSlowdown
                secondLoad += Double(weights[first])
            } else if secondSlowdown > markedlySlower {
                secondLoad = (secondLoad + Double(weights[first])) * secondSlowdown * secondSlowdown
                firstLoad += Double(weights[second])
            }
        }
        return secondLoad < firstLoad ? second : first
    }

    /// How many times slower a target with average answer time `average` is than one with
    /// average `other` and lower envelope `low` (1 when it is not slower): one plus the difference
    /// of the averages over the faster one's own answer time, taken as its envelope (at most its
    /// average). The times a gateway measures include its own queueing (waiting for the event
    /// loop to read an answer), which adds alike to both averages and so cancels in their
    /// difference, but grows a plain ratio of them toward 1 as the gateway gets busier.
    static func slowdown(_ average: Double, against other: Double, low: Int) -> Double {
        1 + max(average - other, 0) / max(min(Double(low), other), 1)
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
