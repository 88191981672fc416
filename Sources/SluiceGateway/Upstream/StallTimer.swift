import NIOCore
import Synchronization

/// Cuts off an upstream whose response stops flowing: when nothing arrived for `timeout`, the
/// task reading the upstream is cancelled. One timer per exchange, re-armed lazily (a chunk only
/// moves a timestamp).
final class StallTimer: Sendable {
    private struct State {
        var lastProgress: NIODeadline
        var onStall: (@Sendable () -> Void)?
        var scheduled: Scheduled<Void>?
        var stalled = false
        var stopped = false
    }

    private let state: Mutex<State>
    private let timeout: TimeAmount
    private let eventLoop: any EventLoop

    init(timeout: Duration, eventLoop: any EventLoop) {
        self.timeout = TimeAmount(timeout)
        self.eventLoop = eventLoop
        state = Mutex(State(lastProgress: .now()))
    }

    /// Whether the timer fired.
    var didStall: Bool { state.withLock { $0.stalled } }

    /// What to do on a stall (cancel the task reading the upstream); replaceable as reading moves on.
    func setAction(_ onStall: @escaping @Sendable () -> Void) {
        state.withLock { $0.onStall = onStall }
    }

    /// Starts timing (when the body starts to arrive); later calls only count as progress.
    func start() {
        let schedule = state.withLock { state in
            state.lastProgress = .now()
            return state.scheduled == nil && !state.stopped
        }
        if schedule { arm(at: .now() + timeout) }
    }

    /// Data arrived.
    func progress() {
        state.withLock { $0.lastProgress = .now() }
    }

    func stop() {
        let scheduled = state.withLock { state in
            state.stopped = true
            state.onStall = nil
            defer { state.scheduled = nil }
            return state.scheduled
        }
        scheduled?.cancel()
    }

    private func arm(at deadline: NIODeadline) {
        let scheduled = eventLoop.scheduleTask(deadline: deadline) { [self] in
            let (action, next): ((@Sendable () -> Void)?, NIODeadline?) = state.withLock { state in
                state.scheduled = nil
                guard !state.stopped else { return (nil, nil) }
                let due = state.lastProgress + timeout
                if due <= .now() {
                    state.stalled = true
                    return (state.onStall, nil)
                }
                return (nil, due)
            }
            action?()
            if let next { arm(at: next) }
        }
        state.withLock { state in
            if state.stopped { scheduled.cancel() } else { state.scheduled = scheduled }
        }
    }
}
