import ServiceLifecycle
import Synchronization

/// Cuts a polling loop's wait short: set when there is work to look at (a task accepted on this
/// instance; a slot freed while the last look found more than there were slots; a webhook
/// message made or falling due again on this instance).
final class WorkerWakeUp: Sendable {
    private let flag = Atomic<Bool>(false)
    /// When work this instance put off falls due (the earliest such time).
    private let alarm = Mutex<ContinuousClock.Instant?>(nil)

    func wake() { flag.store(true, ordering: .relaxed) }

    /// Wakes the loop once `delay` has passed (unless it looks earlier anyway).
    func wake(after delay: Duration) {
        let at = ContinuousClock.now + delay
        alarm.withLock { $0 = min($0 ?? at, at) }
    }

    /// Waits for `duration`, a wake-up (then returns true), or shutdown.
    func pause(for duration: Duration) async -> Bool {
        let deadline = ContinuousClock.now + duration
        while ContinuousClock.now < deadline {
            if flag.exchange(false, ordering: .relaxed) || alarmRang() { return true }
            guard await pauseUnlessShuttingDown(for: .milliseconds(20)) else { return false }
        }
        return false
    }

    private func alarmRang() -> Bool {
        alarm.withLock { at in
            guard let due = at, due <= .now else { return false }
            at = nil
            return true
        }
    }
}
