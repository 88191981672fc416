import NIOCore
import Synchronization

/// At most `limit` calls to one upstream at once; further calls wait in line up to
/// `queueTimeout` for a slot, then give up (503). Each upstream has its own, so one saturated
/// backend never slows another's routes.
final class Bulkhead: Sendable {
    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Bool, Never>
    }

    private struct State {
        var inUse = 0
        var waiting: [Waiter] = []
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())
    let limit: Int
    private let queueTimeout: Duration
    private let eventLoop: any EventLoop

    init(limit: Int, queueTimeout: Duration, eventLoop: any EventLoop) {
        self.limit = limit
        self.queueTimeout = queueTimeout
        self.eventLoop = eventLoop
    }

    var inUse: Int { state.withLock { $0.inUse } }
    /// Calls waiting for a slot.
    var waiting: Int { state.withLock { $0.waiting.count } }

    /// Takes a slot; false when none came free within the queue timeout.
    func acquire() async -> Bool {
        let id: UInt64? = state.withLock { state in
            if state.inUse < limit {
                state.inUse += 1
                return nil
            }
            state.nextID += 1
            return state.nextID
        }
        guard let id else { return true }
        guard queueTimeout > .zero else { return false }
        return await withCheckedContinuation { continuation in
            let enqueued = state.withLock { state in
                if state.inUse < limit {  // a slot came free meanwhile
                    state.inUse += 1
                    return false
                }
                state.waiting.append(Waiter(id: id, continuation: continuation))
                return true
            }
            guard enqueued else {
                continuation.resume(returning: true)
                return
            }
            eventLoop.scheduleTask(in: TimeAmount(queueTimeout)) { [self] in
                let waiter = state.withLock { state in
                    state.waiting.firstIndex { $0.id == id }.map { state.waiting.remove(at: $0) }
                }
                waiter?.continuation.resume(returning: false)
            }
        }
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
        next?.continuation.resume(returning: true)
    }
}
