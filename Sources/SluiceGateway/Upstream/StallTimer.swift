import NIOCore

/// Fires when data stops arriving for longer than `timeout`. Bound to one event loop; a chunk
/// only moves a timestamp, and the timer re-arms itself lazily, so progress costs no scheduling.
final class StallTimer {
    private let timeout: TimeAmount
    private let eventLoop: any EventLoop
    private var lastProgress = NIODeadline.now()
    private var scheduled: Scheduled<Void>?
    private var onStall: (() -> Void)?

    init(timeout: Duration, eventLoop: any EventLoop) {
        self.timeout = TimeAmount(timeout)
        self.eventLoop = eventLoop
    }

    /// Starts timing now; `onStall` runs once if nothing arrives for `timeout`.
    func start(onStall: @escaping () -> Void) {
        self.onStall = onStall
        lastProgress = .now()
        if scheduled == nil { arm(at: lastProgress + timeout) }
    }

    /// Data arrived.
    func progress() {
        lastProgress = .now()
    }

    func stop() {
        onStall = nil
        scheduled?.cancel()
        scheduled = nil
    }

    private func arm(at deadline: NIODeadline) {
        scheduled = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            scheduled = nil
            guard let onStall else { return }
            let due = lastProgress + timeout
            if due > .now() {
                arm(at: due)
            } else {
                self.onStall = nil
                onStall()
            }
        }
    }
}
