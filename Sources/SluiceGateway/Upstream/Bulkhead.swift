import NIOCore
import Synchronization

/// At most `limit` calls to one upstream at once; further calls wait in line up to
/// `queueTimeout` for a slot, then give up (503). Each upstream has its own, so one saturated
/// backend never slows another's routes. A free slot is taken without waiting or allocating;
/// a queued caller is called back on its own event loop.
final class Bulkhead: Sendable {
    /// What `acquire` did.
    enum Attempt {
        case acquired
        /// No slot and no waiting allowed (`queue_timeout: 0ms`).
        case refused
        /// Waiting; `resume` will be called with the outcome unless `cancel(waiter)` comes first.
        case queued(waiter: UInt64)
    }

    private struct Waiter {
        let id: UInt64
        let eventLoop: any EventLoop
        let resume: @Sendable (Bool) -> Void
    }

    private struct State {
        var inUse = 0
        var waiting: [Waiter] = []
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())
    let limit: Int
    private let queueTimeout: Duration

    init(limit: Int, queueTimeout: Duration) {
        self.limit = limit
        self.queueTimeout = queueTimeout
    }

    var inUse: Int { state.withLock { $0.inUse } }
    /// Calls waiting for a slot.
    var waiting: Int { state.withLock { $0.waiting.count } }

    /// Takes a free slot if there is one (no allocation: the fast path of `acquire`).
    func tryAcquire() -> Bool {
        state.withLock { state in
            guard state.inUse < limit else { return false }
            state.inUse += 1
            return true
        }
    }

    /// Takes a slot, or queues for one: `resume(true)` runs on `eventLoop` when a slot is handed
    /// over, `resume(false)` when `queue_timeout` passed first.
    func acquire(on eventLoop: any EventLoop, resume: @escaping @Sendable (Bool) -> Void) -> Attempt {
        let attempt: Attempt = state.withLock { state in
            if state.inUse < limit {
                state.inUse += 1
                return .acquired
            }
            guard queueTimeout > .zero else { return .refused }
            state.nextID += 1
            state.waiting.append(Waiter(id: state.nextID, eventLoop: eventLoop, resume: resume))
            return .queued(waiter: state.nextID)
        }
        if case .queued(let id) = attempt {
            eventLoop.scheduleTask(in: TimeAmount(queueTimeout)) { [self] in
                if let waiter = remove(id) { waiter.resume(false) }
            }
        }
        return attempt
    }

    /// A queued caller gave up (its client went away): it will not be called back.
    func cancel(_ waiter: UInt64) {
        _ = remove(waiter)
    }

    /// Returns a slot: the longest waiting call gets it.
    func release() {
        let next: Waiter? = state.withLock { state in
            if state.waiting.isEmpty {
                state.inUse -= 1
                return nil
            }
            return state.waiting.removeFirst()
        }
        guard let next else { return }
        if next.eventLoop.inEventLoop {
            next.resume(true)
        } else {
            next.eventLoop.execute { next.resume(true) }
        }
    }

    private func remove(_ id: UInt64) -> Waiter? {
        state.withLock { state in
            state.waiting.firstIndex { $0.id == id }.map { state.waiting.remove(at: $0) }
        }
    }
}
