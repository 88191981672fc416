/// When and how long to wait before retrying an upstream call (SPEC §2 `retries`).
public enum RetryRules {
    /// Methods whose requests may be sent twice: GET, HEAD, OPTIONS, PUT, DELETE. Other requests
    /// are retried only when they carry an `Idempotency-Key`.
    public static func mayRetry(method: String, hasIdempotencyKey: Bool) -> Bool {
        hasIdempotencyKey || ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"].contains(method)
    }

    /// Full jitter: the wait before retry `number` (1, 2, …) is uniform in
    /// `0 … min(max, min·2^(number-1))`.
    public static func backoff(
        retry number: Int, min: Duration, max: Duration, using random: inout some RandomNumberGenerator
    ) -> Duration {
        let cap = Swift.min(max, min * (1 << Swift.min(number - 1, 20)))
        let nanoseconds = cap.nanoseconds
        guard nanoseconds > 0 else { return .zero }
        return .nanoseconds(Int64.random(in: 0...nanoseconds, using: &random))
    }
}

/// Keeps retries to an upstream under `budget` (a share) of its requests in the last ten
/// seconds, so retries cannot multiply an outage; `minimum` retries per ten seconds are always
/// allowed, so a quiet upstream can still be retried.
public struct RetryBudget<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration, Instant: Sendable {
    private struct Slot: Sendable {
        var start: Instant
        var requests = 0
        var retries = 0
    }

    private let share: Double
    private let minimum: Int
    private var slots: [Slot] = []

    public init(share: Double, minimum: Int = 3) {
        self.share = share
        self.minimum = minimum
    }

    /// Counts a request (a first try).
    public mutating func recordRequest(now: Instant) {
        advance(to: now)
        slots[slots.count - 1].requests += 1
    }

    /// Takes a retry from the budget; false when the budget is spent.
    public mutating func takeRetry(now: Instant) -> Bool {
        advance(to: now)
        let requests = slots.reduce(0) { $0 + $1.requests }
        let retries = slots.reduce(0) { $0 + $1.retries }
        guard Double(retries + 1) <= max(Double(minimum), share * Double(requests)) else { return false }
        slots[slots.count - 1].retries += 1
        return true
    }

    /// Drops slots older than ten seconds and opens a new one-second slot when needed.
    private mutating func advance(to now: Instant) {
        // Slots are in time order: only the oldest can have expired since the last call.
        while let first = slots.first, first.start.duration(to: now) >= .seconds(10) { slots.removeFirst() }
        if let last = slots.last, last.start.duration(to: now) < .seconds(1) { return }
        slots.append(Slot(start: now))
    }
}
