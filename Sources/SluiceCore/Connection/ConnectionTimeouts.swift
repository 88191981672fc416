/// Decides when a client connection is closed for being slow or idle:
///
/// - a request head (and, for a new connection, the TLS handshake) must arrive within
///   `headerTimeout` of its first byte (or of the connection opening);
/// - a request body must keep flowing: no more than `idleTimeout` between reads — except while
///   the gateway itself holds the body's reads (back-pressure from a slow upstream): then the
///   partner cannot send, and the upstream call's own deadline bounds the wait;
/// - a connection with no request in progress is closed after `idleTimeout`;
/// - while a request waits for its response, no timeout applies here (upstream timeouts do).
///
/// The state machine only moves a deadline; the owner keeps one timer and asks again when it
/// fires, so a read that pushes the deadline later costs no rescheduling. A deadline that
/// moves earlier than the armed timer re-arms it.
public struct ConnectionTimeouts<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration, Instant: Sendable {
    public enum Action: Equatable, Sendable {
        case none
        /// (Re)arm the one timer for this instant, replacing any armed one, and call `timerFired` then.
        case arm(Instant)
        /// Close the connection.
        case close
    }

    private let headerTimeout: Duration
    private let idleTimeout: Duration
    private var deadline: Instant?
    /// When the armed timer fires; nil when none is armed.
    private var armedFor: Instant?
    private var requestsInProgress = 0
    private var bodiesInProgress = 0
    /// Bodies whose reads the gateway holds (back-pressure): they cannot be idle.
    private var bodiesHeld = 0
    private var awaitingHead = true
    private var multiplexed = false

    /// A new connection: its first request head must arrive within `headerTimeout`.
    public init(headerTimeout: Duration, idleTimeout: Duration, now: Instant) {
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.deadline = now.advanced(by: headerTimeout)
    }

    /// Arms the first timer.
    public mutating func start() -> Action { arm() }

    /// HTTP/2 was negotiated: bytes between requests (pings, settings) are not request heads.
    public mutating func connectionIsMultiplexed() {
        multiplexed = true
    }

    public mutating func bytesReceived(now: Instant) -> Action {
        if bodiesInProgress > bodiesHeld {
            deadline = now.advanced(by: idleTimeout)
        } else if requestsInProgress == 0 && !awaitingHead && !multiplexed {
            awaitingHead = true
            deadline = now.advanced(by: headerTimeout)
        }
        return arm()
    }

    public mutating func requestHeadReceived(now: Instant) -> Action {
        requestsInProgress += 1
        bodiesInProgress += 1
        awaitingHead = false
        deadline = now.advanced(by: idleTimeout)
        return arm()
    }

    /// The gateway stopped reading a request body (its upstream cannot take more yet): while every
    /// body in progress is held, no body deadline applies.
    public mutating func bodyReadsHeld(now: Instant) -> Action {
        bodiesHeld = min(bodiesHeld + 1, bodiesInProgress)
        if bodiesInProgress > 0, bodiesHeld == bodiesInProgress { deadline = nil }
        return arm()
    }

    /// The gateway reads a held body again: it must flow from now on.
    public mutating func bodyReadsResumed(now: Instant) -> Action {
        bodiesHeld = max(0, bodiesHeld - 1)
        if bodiesInProgress > bodiesHeld { deadline = now.advanced(by: idleTimeout) }
        return arm()
    }

    public mutating func requestBodyEnded(now: Instant) -> Action {
        bodiesInProgress = max(0, bodiesInProgress - 1)
        bodiesHeld = min(bodiesHeld, bodiesInProgress)
        if bodiesInProgress == 0 {
            deadline = requestsInProgress > 0 ? nil : now.advanced(by: idleTimeout)
        } else if bodiesHeld == bodiesInProgress {
            deadline = nil
        }
        return arm()
    }

    public mutating func responseEnded(now: Instant) -> Action {
        requestsInProgress = max(0, requestsInProgress - 1)
        if requestsInProgress == 0 && bodiesInProgress == 0 {
            deadline = now.advanced(by: idleTimeout)
        }
        return arm()
    }

    public mutating func timerFired(now: Instant) -> Action {
        armedFor = nil
        guard let deadline else { return .none }
        if now >= deadline { return .close }
        return arm()
    }

    private mutating func arm() -> Action {
        guard let deadline else { return .none }
        if let armedFor, armedFor <= deadline { return .none }
        armedFor = deadline
        return .arm(deadline)
    }
}
