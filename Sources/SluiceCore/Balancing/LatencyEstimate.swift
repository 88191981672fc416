import Foundation

/// A target's recent answer times as `least_request` weighs them: a moving average of its
/// samples (each moves it a twentieth of the way, a sample over four times the average counting
/// as four times it, so one pause of the machine does not mark a target slow while a target that
/// turned ten times slower is seen within a score of answers) that fades toward zero while the
/// target gets no calls (time constant five seconds), so a target avoided for being slow is
/// tried again within seconds, and its next answers say whether it still is; and a lower envelope of the samples
/// (half way down toward a faster answer, a sixty-fourth up toward a slower one), which sits near
/// the target's own answer time when the gateway's queueing adds to some samples and not to others.
public struct LatencyEstimate: Sendable, Equatable {
    /// The moving average in nanoseconds; 0: no sample yet.
    public var nanoseconds: Int
    /// The lower envelope in nanoseconds; 0: no sample yet.
    public var low: Int
    /// When the last sample came, in nanoseconds on the caller's monotonic clock.
    public var sampledAt: Int64

    public static let none = LatencyEstimate(nanoseconds: 0, low: 0, sampledAt: 0)
    /// How far one sample moves the average.
    static let sampleWeight = 0.05
    /// A sample counts in the average as at most this many times the average.
    static let outlierBound = 4.0
    /// How far a faster sample moves the envelope down, and a slower one moves it up.
    static let envelopeDown = 0.5
    static let envelopeUp = 1.0 / 64
    /// The fading time constant, in nanoseconds.
    static let fadeNanoseconds = 5e9

    public init(nanoseconds: Int, low: Int, sampledAt: Int64) {
        self.nanoseconds = nanoseconds
        self.low = low
        self.sampledAt = sampledAt
    }

    public var isKnown: Bool { nanoseconds > 0 }

    /// The estimate after a sample of `sample` nanoseconds at `now` (the first sample is taken whole).
    public func adding(sample: Int, at now: Int64) -> LatencyEstimate {
        let sample = Double(max(sample, 1))
        guard isKnown else { return LatencyEstimate(nanoseconds: Int(sample), low: Int(sample), sampledAt: now) }
        let current = faded(at: now)
        let average = current + (min(sample, current * Self.outlierBound) - current) * Self.sampleWeight
        let low = Double(max(self.low, 1))
        let envelope = low + (sample - low) * (sample < low ? Self.envelopeDown : Self.envelopeUp)
        return LatencyEstimate(nanoseconds: max(Int(average), 1), low: max(Int(envelope), 1), sampledAt: now)
    }

    /// The average at `now`, faded for the time since the last sample.
    public func faded(at now: Int64) -> Double {
        Double(nanoseconds) * exp(-Double(max(now - sampledAt, 0)) / Self.fadeNanoseconds)
    }
}
