import Synchronization

/// A route's canary (SPEC §7 `canary:`) for one policy generation: which partners go to the
/// canary upstream, and whether it was aborted — then nobody goes (`partners:` included) until
/// a reload makes a new split.
///
/// A partner is on the canary when it is listed, or when its bucket (a stable hash of its id,
/// 0..<10 000) is below `share × 10 000`: every instance agrees, every route with the same
/// share picks the same partners, and raising the share keeps the partners already on it.
public final class CanarySplit: Sendable {
    public let policy: RoutePolicy.Canary
    public let upstream: UpstreamPolicy
    private let threshold: UInt64
    private let partners: Set<String>
    private let aborted = Atomic<Bool>(false)
    private let window: Mutex<OutcomeWindow>

    public init(_ policy: RoutePolicy.Canary, upstream: UpstreamPolicy) {
        self.policy = policy
        self.upstream = upstream
        threshold = UInt64((policy.share * 10_000).rounded())
        partners = Set(policy.partners)
        window = Mutex(OutcomeWindow(size: policy.abortOn?.minCalls ?? 1, limit: policy.abortOn?.errorRate ?? 1))
    }

    /// The partner's bucket, 0..<10 000.
    public static func bucket(of partner: String) -> UInt64 {
        StableHash.of(partner) % 10_000
    }

    /// Whether `partner`'s calls go to the canary.
    public func takes(partner: String) -> Bool {
        guard !aborted.load(ordering: .relaxed) else { return false }
        return partners.contains(partner) || Self.bucket(of: partner) < threshold
    }

    public var isAborted: Bool { aborted.load(ordering: .relaxed) }

    /// A call on the canary ended (`failed`: a 5xx or a timeout). True when this call's outcome
    /// aborted the canary (once).
    public func record(failed: Bool) -> Bool {
        guard policy.abortOn != nil, !aborted.load(ordering: .relaxed) else { return false }
        guard window.withLock({ $0.record(failed: failed) }) else { return false }
        return aborted.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
    }
}

/// The last `size` outcomes of a canary's calls and how many of them failed.
public struct OutcomeWindow: Sendable {
    private var ring: [Bool]
    private var next = 0
    private var seen = 0
    private var failures = 0
    public let limit: Double

    public init(size: Int, limit: Double) {
        ring = Array(repeating: false, count: max(1, size))
        self.limit = limit
    }

    /// Records one outcome; true when the window is full and its failure share is above `limit`.
    public mutating func record(failed: Bool) -> Bool {
        if seen == ring.count, ring[next] { failures -= 1 }
        ring[next] = failed
        if failed { failures += 1 }
        next = (next + 1) % ring.count
        seen = min(seen + 1, ring.count)
        return seen == ring.count && Double(failures) > limit * Double(ring.count)
    }
}
