import Synchronization

/// A circuit breaker around the store, on atomics (no lock per request). After `threshold`
/// consecutive failures the store is skipped for `openFor`; then one probe call is let through:
/// success closes the breaker, failure opens it again. So while Redis is down, requests go
/// straight to the fallback instead of each waiting out a store timeout.
final class StoreBreaker: Sendable {
    enum Permission {
        case call
        case skip
    }

    private let failures = Atomic<Int>(0)
    /// Uptime nanoseconds until which the store is skipped; 0 = closed.
    private let openUntil = Atomic<UInt64>(0)
    private let probing = Atomic<Bool>(false)
    private let threshold: Int
    private let openFor: Duration

    init(threshold: Int = 2, openFor: Duration = .seconds(1)) {
        self.threshold = threshold
        self.openFor = openFor
    }

    var isOpen: Bool { openUntil.load(ordering: .relaxed) != 0 }

    func permission(now: ContinuousClock.Instant = .now) -> Permission {
        let until = openUntil.load(ordering: .acquiring)
        if until == 0 { return .call }
        if Self.nanoseconds(now) < until { return .skip }
        return probing.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged ? .call : .skip
    }

    /// The store moved (a failover): an open breaker lets its probe through now instead of at
    /// the end of `openFor` (a probe already under way still decides alone).
    func storeMoved() {
        let until = openUntil.load(ordering: .acquiring)
        guard until > 1 else { return }
        _ = openUntil.compareExchange(expected: until, desired: 1, ordering: .acquiringAndReleasing)
    }

    /// Records a successful call; true when this closed an open breaker.
    func succeeded() -> Bool {
        failures.store(0, ordering: .relaxed)
        guard openUntil.load(ordering: .acquiring) != 0 else { return false }
        openUntil.store(0, ordering: .releasing)
        probing.store(false, ordering: .releasing)
        return true
    }

    /// Records a failed call; true when this opened a closed breaker.
    func failed(now: ContinuousClock.Instant = .now) -> Bool {
        let wasOpen = openUntil.load(ordering: .acquiring) != 0
        let count = failures.add(1, ordering: .relaxed).newValue
        guard wasOpen || count >= threshold else { return false }
        openUntil.store(Self.nanoseconds(now + openFor), ordering: .releasing)
        probing.store(false, ordering: .releasing)
        return !wasOpen
    }

    private static func nanoseconds(_ instant: ContinuousClock.Instant) -> UInt64 {
        let elapsed = instant - Self.origin
        return UInt64(max(1, elapsed.nanoseconds))
    }

    private static let origin = ContinuousClock.now - .seconds(1)
}
