public import Foundation
import Synchronization

/// Where a test's manual clock starts: far before real time, at real time, or far after it.
/// Store behaviour must not depend on how the injected clock relates to the real one (Redis
/// expires keys by its own clock, whatever `now` a script is given).
public enum ClockEpoch: String, CaseIterable, Sendable {
    /// 2000-02-15T12:00:00Z (a leap-year February: 29 days).
    case past
    /// The real time when the test starts.
    case present
    /// 2100-02-15T12:00:00Z (February of a century year that is not a leap year: 28 days).
    case future

    /// Epoch milliseconds.
    public var start: Int64 {
        switch self {
        case .past: 950_616_000_000
        case .present: Int64((Date().timeIntervalSince1970 * 1_000).rounded(.down))
        case .future: 4_106_376_000_000
        }
    }
}

/// A clock tests move by hand, in epoch milliseconds.
public final class ManualClock: Sendable {
    private let milliseconds: Atomic<Int64>
    private let start: Int64
    /// What `instantClock` reads at `start`.
    private let origin = ContinuousClock.now

    public init(_ epoch: ClockEpoch) {
        start = epoch.start
        milliseconds = Atomic(start)
    }

    public var now: Int64 { milliseconds.load(ordering: .relaxed) }
    public func advance(_ by: Int64) { milliseconds.add(by, ordering: .relaxed) }
    public func set(_ to: Int64) { milliseconds.store(to, ordering: .relaxed) }
    /// The clock as stores and the gateway take it (`EpochClock`).
    public var epochClock: @Sendable () -> Int64 { { self.now } }
    /// The same clock as monotonic instants (for circuit breakers and retry budgets): it moves
    /// only when the test moves it.
    public var instantClock: @Sendable () -> ContinuousClock.Instant { { self.origin + .milliseconds(self.now - self.start) } }
}

/// UTC calendar windows computed with Foundation's Calendar: an oracle independent of
/// `QuotaWindowCalendar`, so the contract tests do not check the stores against their own math.
public enum UTCCalendarOracle {
    private static let calendar: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()

    /// Start and end (exclusive), epoch milliseconds, of the UTC day or month containing `milliseconds`.
    public static func window(_ component: Calendar.Component, containing milliseconds: Int64) -> (start: Int64, end: Int64) {
        let interval = calendar.dateInterval(of: component, for: Date(timeIntervalSince1970: Double(milliseconds) / 1_000))!
        return (Int64(interval.start.timeIntervalSince1970 * 1_000), Int64(interval.end.timeIntervalSince1970 * 1_000))
    }
}
