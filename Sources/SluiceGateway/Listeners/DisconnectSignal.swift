import NIOCore
import Synchronization

/// Tells the request being served on an HTTP/1.1 connection that its client went away (closed
/// the connection, or its sending side: clients that hang up send a FIN, and half-closed
/// connections stay open here), so a request waiting for a slow upstream is cancelled at once
/// (and its concurrency slot freed) rather than when the upstream answers. One per connection,
/// with one close callback per connection.
final class DisconnectSignal: Sendable {
    private enum State {
        case open(action: (@Sendable () -> Void)?)
        case closed
    }

    private let state = Mutex(State.open(action: nil))

    init(closeFuture: EventLoopFuture<Void>) {
        closeFuture.whenComplete { [self] _ in clientWentAway() }
    }

    /// The client closed the connection or stopped sending.
    func clientWentAway() {
        let action: (@Sendable () -> Void)? = state.withLock { state in
            defer { state = .closed }
            if case .open(let action) = state { return action }
            return nil
        }
        action?()
    }

    /// Runs `action` if the client goes away from now until `disarm()` (at once when it already has).
    func arm(onClose action: @escaping @Sendable () -> Void) {
        let alreadyClosed = state.withLock { state in
            if case .closed = state { return true }
            state = .open(action: action)
            return false
        }
        if alreadyClosed { action() }
    }

    func disarm() {
        state.withLock { state in
            if case .open = state { state = .open(action: nil) }
        }
    }
}
