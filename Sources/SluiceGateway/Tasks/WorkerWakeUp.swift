import ServiceLifecycle
import Synchronization

/// Cuts a polling loop's wait short: set when there is work to look at (a task accepted on this
/// instance; a slot freed while the last look found more than there were slots).
final class WorkerWakeUp: Sendable {
    private let flag = Atomic<Bool>(false)

    func wake() { flag.store(true, ordering: .relaxed) }

    /// Waits for `duration`, a wake-up (then returns true), or shutdown.
    func pause(for duration: Duration) async -> Bool {
        let deadline = ContinuousClock.now + duration
        while ContinuousClock.now < deadline {
            if flag.exchange(false, ordering: .relaxed) { return true }
            guard await pauseUnlessShuttingDown(for: .milliseconds(20)) else { return false }
        }
        return false
    }
}
