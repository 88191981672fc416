import NIOCore

/// A timer that is cheap to set over and over: `wake(noLaterThan:)` keeps an already scheduled
/// run when that comes earlier, so a connection serving request after request schedules about
/// once per timeout instead of once per request. The owner checks, when woken, whether its
/// deadline has really come, and sets the timer again if not. Bound to one event loop.
final class LazyTimer {
    private let eventLoop: any EventLoop
    private let onWake: () -> Void
    private var scheduled: (at: NIODeadline, task: Scheduled<Void>)?

    init(eventLoop: any EventLoop, onWake: @escaping () -> Void) {
        self.eventLoop = eventLoop
        self.onWake = onWake
    }

    /// Makes sure the owner is woken at `deadline` at the latest (perhaps earlier).
    func wake(noLaterThan deadline: NIODeadline) {
        if let scheduled, scheduled.at <= deadline { return }
        scheduled?.task.cancel()
        let task = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            guard let self else { return }
            self.scheduled = nil
            self.onWake()
        }
        scheduled = (deadline, task)
    }

    func cancel() {
        scheduled?.task.cancel()
        scheduled = nil
    }
}
