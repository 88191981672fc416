/// A count-based circuit breaker as a value (SPEC §2 `circuit_breaker`).
///
/// - **Closed**: calls go through; the outcomes of the last `window` calls are kept. Once at
///   least `min_calls` were seen and the failure share reaches `failure_rate`, it opens.
/// - **Open**: calls are refused (with how long it stays open) and nothing is sent upstream.
///   After `open_for` the next caller finds it half-open.
/// - **Half-open**: `half_open_probes` calls are let through; all succeeding closes it, any
///   failing opens it again.
///
/// Failures are what the caller reports as such (5xx, connect errors, timeouts) plus calls
/// slower than `slow_call`. Cancelled calls (the client went away) count for nothing and give
/// a half-open probe back. Every state change bumps a generation: results of calls admitted
/// under an earlier generation are ignored, so a late result cannot flip a newer state.
public struct CircuitBreaker<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration, Instant: Sendable {
    public enum State: Sendable, Equatable {
        case closed
        case open(until: Instant)
        case halfOpen
    }

    /// Proof that a call was let through, to report its outcome with.
    public struct Ticket: Sendable, Equatable {
        let generation: UInt64
        let isProbe: Bool
    }

    public enum Permission: Sendable, Equatable {
        case allowed(Ticket)
        /// Refused; `retryAfter` is how long the breaker stays open (or probes are out).
        case refused(retryAfter: Duration)
    }

    public enum Outcome: Sendable, Equatable {
        case success
        case failure
        /// The caller gave up (client disconnected): no verdict on the upstream.
        case cancelled
    }

    private let configuration: UpstreamPolicy.CircuitBreaker
    public private(set) var state: State = .closed
    public private(set) var generation: UInt64 = 0
    private var outcomes: [Bool]  // ring buffer, true = failure
    private var next = 0
    private var count = 0
    private var failures = 0
    private var probesOut = 0
    private var probeSuccesses = 0

    public init(_ configuration: UpstreamPolicy.CircuitBreaker) {
        self.configuration = configuration
        outcomes = Array(repeating: false, count: max(1, configuration.window))
    }

    /// Asks to make a call at `now`; the returned transition (if any) is to log and count.
    public mutating func acquire(now: Instant) -> (Permission, transition: State?) {
        var transition: State?
        if case .open(let until) = state {
            guard now >= until else { return (.refused(retryAfter: now.duration(to: until)), nil) }
            enter(.halfOpen)
            transition = .halfOpen
        }
        switch state {
        case .closed:
            return (.allowed(Ticket(generation: generation, isProbe: false)), transition)
        case .halfOpen:
            guard probesOut + probeSuccesses < configuration.halfOpenProbes else {
                return (.refused(retryAfter: .seconds(1)), transition)
            }
            probesOut += 1
            return (.allowed(Ticket(generation: generation, isProbe: true)), transition)
        case .open(let until):
            return (.refused(retryAfter: now.duration(to: until)), transition)
        }
    }

    /// Reports how an allowed call ended; returns the state it moved to, if it moved.
    public mutating func record(_ ticket: Ticket, _ outcome: Outcome, duration: Duration, now: Instant) -> State? {
        guard ticket.generation == generation else { return nil }
        var failed = outcome == .failure
        if outcome == .success, let slow = configuration.slowCall, duration > slow { failed = true }
        switch state {
        case .closed:
            guard outcome != .cancelled else { return nil }
            push(failed)
            if count >= configuration.minCalls, Double(failures) >= configuration.failureRate * Double(count) {
                return enter(.open(until: now.advanced(by: configuration.openFor)))
            }
            return nil
        case .halfOpen:
            guard ticket.isProbe else { return nil }
            probesOut -= 1
            if outcome == .cancelled { return nil }
            if failed { return enter(.open(until: now.advanced(by: configuration.openFor))) }
            probeSuccesses += 1
            return probeSuccesses >= configuration.halfOpenProbes ? enter(.closed) : nil
        case .open:
            return nil
        }
    }

    @discardableResult
    private mutating func enter(_ newState: State) -> State {
        state = newState
        generation &+= 1
        probesOut = 0
        probeSuccesses = 0
        if case .closed = newState {
            count = 0
            failures = 0
            next = 0
        }
        return newState
    }

    private mutating func push(_ failed: Bool) {
        if count == outcomes.count {
            if outcomes[next] { failures -= 1 }
        } else {
            count += 1
        }
        outcomes[next] = failed
        if failed { failures += 1 }
        next = (next + 1) % outcomes.count
    }
}
