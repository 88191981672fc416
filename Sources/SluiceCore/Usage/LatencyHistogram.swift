import Foundation

/// Latencies counted in fixed log-spaced buckets, so that histograms from any instance and any
/// day merge by adding counts. Bucket 0 holds everything under 100 µs; bucket `i ≥ 1` holds
/// [100 µs · 1.1^(i−1), 100 µs · 1.1^i), so a bucket is 10 % wide and a quantile read as the
/// bucket's geometric middle is within 5 % of the true value. The last bucket (about 6 h and
/// more) is open-ended.
public struct LatencyHistogram: Sendable, Equatable {
    /// Bucket index → count; only buckets that were hit.
    public private(set) var counts: [Int: Int64] = [:]

    public static let growth = 1.1
    public static let lowestMicroseconds = 100.0
    public static let maxIndex = 250
    private static let logGrowth = log(growth)

    public init() {}

    public var total: Int64 { counts.values.reduce(0, +) }

    /// The bucket of a latency.
    public static func index(microseconds: Int64) -> Int {
        guard Double(microseconds) >= lowestMicroseconds else { return 0 }
        let position = log(Double(microseconds) / lowestMicroseconds) / logGrowth
        return min(maxIndex, Int(position) + 1)
    }

    /// The value a quantile falling into `index` is reported as, in milliseconds.
    public static func representativeMilliseconds(_ index: Int) -> Double {
        guard index > 0 else { return lowestMicroseconds / 2 / 1_000 }
        return lowestMicroseconds * pow(growth, Double(index - 1)) * growth.squareRoot() / 1_000
    }

    public mutating func record(microseconds: Int64) {
        counts[Self.index(microseconds: microseconds), default: 0] += 1
    }

    /// Adds `count` observations to a bucket (merging, reading from the store).
    public mutating func add(bucket index: Int, count: Int64) {
        guard count != 0, (0...Self.maxIndex).contains(index) else { return }
        counts[index, default: 0] += count
    }

    public mutating func merge(_ other: LatencyHistogram) {
        for (index, count) in other.counts { counts[index, default: 0] += count }
    }

    /// The `q`-quantile (0 < q ≤ 1) in milliseconds, nil when empty.
    public func quantile(_ q: Double) -> Double? {
        let total = total
        guard total > 0 else { return nil }
        let rank = max(1, Int64((q * Double(total)).rounded(.up)))
        var seen: Int64 = 0
        for index in counts.keys.sorted() {
            seen += counts[index] ?? 0
            if seen >= rank { return Self.representativeMilliseconds(index) }
        }
        return counts.keys.max().map(Self.representativeMilliseconds)
    }
}
