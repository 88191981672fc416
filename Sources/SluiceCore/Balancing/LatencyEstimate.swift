import Foundation

/// A target's recent answer time as `least_request` weighs it: a moving average of its
/// samples (each moves it a twentieth of the way) that fades toward zero while the target gets no
/// calls (time constant five seconds), so a target avoided for being slow is tried again within
/// seconds, and its next answers say whether it still is.
public struct LatencyEstimate: Sendable, Equatable {
    /// The estimate in nanoseconds; 0: no sample yet.
    public var nanoseconds: Int
    /// When the last sample came, in nanoseconds on the caller's monotonic clock.
    public var sampledAt: Int64

    public static let none = LatencyEstimate(nanoseconds: 0, sampledAt: 0)
    /// How far one sample moves the estimate.
    static let sampleWeight = 0.05
    /// The fading time constant, in nanoseconds.
    static let fadeNanoseconds = 5e9

    public init(nanoseconds: Int, sampledAt: Int64) {
        self.nanoseconds = nanoseconds
        self.sampledAt = sampledAt
    }

    public var isKnown: Bool { nanoseconds > 0 }

    /// The estimate after a sample of `sample` nanoseconds at `now` (the first sample is taken whole).
    public func adding(sample: Int, at now: Int64) -> LatencyEstimate {
        let sample = Double(max(sample, 1))
        let current = faded(at: now)
        let next = isKnown ? current + (sample - current) * Self.sampleWeight : sample
        return LatencyEstimate(nanoseconds: max(Int(next), 1), sampledAt: now)
    }

    /// The estimate at `now`, faded for the time since the last sample.
    public func faded(at now: Int64) -> Double {
        Double(nanoseconds) * exp(-Double(max(now - sampledAt, 0)) / Self.fadeNanoseconds)
    }
}
