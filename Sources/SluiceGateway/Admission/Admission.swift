import NIOCore
import SluiceCore
import SluiceStore

/// A concurrency lease to hand back when the response ends.
struct HeldLease: Sendable {
    let partner: String
    let id: String
    /// Taken in the per-instance fallback store rather than the shared one.
    let local: Bool
    /// The loop that took it (and gives it back).
    let eventLoop: any EventLoop
}

/// What admission control decided for a request.
struct Admission: Sendable {
    enum Verdict: Sendable {
        case admitted
        case refused(AdmissionVerdict)
        /// `on_redis_failure: deny` while the store is unreachable.
        case storeUnavailable
    }

    var verdict: Verdict
    /// For the RateLimit headers; nil when nothing was decided (no limits, or `allow` fallback).
    var limits: AdmissionLimits?
    var decision: AdmissionDecision?
    var lease: HeldLease?
    /// The idempotency claim made in the same store step, when the request asked for one and the
    /// shared store decided (nil otherwise: the request claims on its own).
    var claim: Result<IdempotencyClaim, any Error>?

    static let admittedWithoutLimits = Admission(verdict: .admitted)
}
