import NIOCore
import NIOHTTP1
import SluiceCore

/// The lifecycle of one upstream call as a value (DESIGN "Lifecycles as state machines"):
/// `UpstreamCall` tells it what happened — the bulkhead's and breaker's answers, the
/// connection's parts, its closing, timers, the partner's body and cancel — and does the
/// `Action` it answers. The machine decides the tries (SPEC §3 timeouts, breakers, retries):
///
/// - tries share the call's deadline: no response head by then is a 504;
/// - every try takes a bulkhead slot on the target the call picks for it (a retry picks one it
///   did not try yet, when there is one);
/// - a try whose connection could not be made (nothing was sent) is tried once more on another
///   target, whatever the method, not counted as a retry (SPEC §7);
/// - a failed try is retried only for a request that may be sent twice, on the listed
///   conditions, while its body can be sent again (none, kept whole, or nothing of it streamed),
///   with attempts and retry budget left and time for the backoff before the deadline;
/// - a pooled connection the upstream closed just before it was used is replaced by a fresh one
///   without counting as a retry, when nothing of the request is lost by it;
/// - a response body with a declared length up to 64 KiB is read whole before its head is
///   delivered (a stall there is still a 504); a larger one streams, and one that stops for
///   `body_timeout` is cut off;
/// - every try's outcome is told to the breaker once (5xx, connect errors, timeouts and broken
///   connections fail; a cancel gives no verdict), and to its target's passive health (connect
///   errors, timeouts, broken connections and 502/503/504 fail; other answers, 4xx included, do not).
struct UpstreamCallStateMachine {
    enum State {
        case idle
        case waitingForSlot
        /// A try asks the breaker, then leases or opens a connection.
        case connecting
        /// The request went out (its streamed body may still be going); no response head yet.
        case awaitingHead
        /// A small response is read whole before its head is delivered.
        case readingWhole(HTTPResponseHead, ByteBuffer?)
        case streaming
        case backingOff
        case finished
    }

    /// What the breaker hears of a try.
    typealias Outcome = CircuitBreaker<ContinuousClock.Instant>.Outcome

    /// What becomes of a try's connection.
    enum ConnectionFate: Equatable {
        /// Nothing (no connection, or the call goes on with it).
        case keep
        /// Back to the pool when the exchange completed cleanly (else closed).
        case giveBack
        case close
    }

    /// What follows the end of a try.
    enum Next {
        /// The call goes on (a streamed response, the head delivered).
        case goOn
        /// Another try after this backoff.
        case retry(after: TimeAmount, condition: UpstreamPolicy.RetryCondition)
        /// Another connection right away (a stale pooled one), not counted as a retry.
        case reconnect
        /// Tell the delegate the call failed.
        case fail(UpstreamFailure)
        /// Tell the delegate the whole response: its head and body.
        case respondWhole(HTTPResponseHead, ByteBuffer?)
        /// Tell the delegate the streamed response is complete.
        case finishStream
        /// Tell the delegate the streamed response broke off.
        case breakOff(UpstreamBreak)
        /// Nothing to tell: the partner went away.
        case cancelled
    }

    /// A try's end: the breaker's verdict (nil when there is none to give), the target's
    /// (failed or not; nil: none), the connection, what follows.
    struct TryEnd {
        var outcome: Outcome?
        var targetFailed: Bool?
        var connection: ConnectionFate
        var next: Next

        /// Whether the try's length says how fast the target answers: a whole answer, an
        /// answer retried for its status, or a timeout (a failed connect says nothing).
        var sampledLatency: Bool {
            switch next {
            case .respondWhole, .retry(_, .status), .fail(.timeout): true
            default: false
            }
        }
    }

    /// How the request goes out on a connection.
    enum Send {
        /// Head and end.
        case bodyless
        /// Head, the whole body, end.
        case whole
        /// Head and the chunks that came meanwhile (then the end when `end`); when not `end`,
        /// the delegate is asked for the rest.
        case streamed(chunks: [(ByteBuffer, EventLoopPromise<Void>?)], end: Bool)
    }

    enum Action {
        case none
        /// Pick a target for the try and take a slot of its bulkhead (`slotDecided`, or
        /// `slotQueued` while it waits).
        case acquireSlot
        /// A try begins: ask the breaker (`breakerAnswered`).
        case askBreaker
        /// Lease an idle connection or open one, bounded by the call's deadline (`connected`, `connectFailed`).
        case leaseConnection
        /// Write the request on the connection (and watch it until `wakeAt`).
        case send(Send, wakeAt: NIODeadline)
        case writeChunk(ByteBuffer, EventLoopPromise<Void>?)
        case writeEnd
        /// A chunk the call can no longer send: fail its promise.
        case refuseChunk(EventLoopPromise<Void>?)
        /// Watch the connection until then.
        case wake(at: NIODeadline)
        /// Deliver the streamed response's head (after telling the breaker `outcome`), and watch
        /// the connection until `wakeAt` (`body_timeout`).
        case respondStreaming(HTTPResponseHead, outcome: Outcome, targetFailed: Bool, wakeAt: NIODeadline)
        case deliver(ByteBuffer)
        case endTry(TryEnd)
    }

    private(set) var state = State.idle
    let deadline: NIODeadline
    private let body: UpstreamRequest.BodyKind
    private let retryable: Bool
    private let retries: UpstreamPolicy.Retries
    private let bodyTimeout: TimeAmount
    private var retried = 0
    /// The one free try on another target (after a connection could not be made, or broke
    /// under a request that may go twice) was used.
    private var failedOver = false
    /// The request's end went out on the current try (its connection may be reused).
    private var requestComplete = false
    /// A try of a streamed body sent some of it: that body cannot be sent again.
    private var bodyConsumed = false
    /// Chunks of the streamed body that came while no try was sending (connecting, backing off).
    private var pendingChunks: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    /// The streamed body ended while no try was sending.
    private var pendingEnd = false
    /// When the response body last moved (`body_timeout`).
    private var lastProgress = NIODeadline.distantPast

    /// Response bodies up to this size (declared) are read whole before forwarding.
    static let wholeBodyLimit = 64 << 10

    init(deadline: NIODeadline, body: UpstreamRequest.BodyKind, retryable: Bool, retries: UpstreamPolicy.Retries, bodyTimeout: Duration) {
        self.deadline = deadline
        self.body = body
        self.retryable = retryable
        self.retries = retries
        self.bodyTimeout = TimeAmount(bodyTimeout)
    }

    /// What a retry needs from outside: the time, and the upstream's retry budget and backoff
    /// (a reference, not closures: making this per response allocates nothing).
    struct RetryContext {
        var now: NIODeadline
        let allowance: any RetryAllowance
    }

    // MARK: - Starting

    mutating func start() -> Action {
        guard case .idle = state else { return .none }
        return .acquireSlot
    }

    /// The bulkhead queued the call.
    mutating func slotQueued() {
        switch state {
        case .idle, .backingOff: state = .waitingForSlot
        default: break
        }
    }

    /// The answer for a try's slot: one (the try begins) or none (no target, or the bulkhead
    /// is full: 503).
    mutating func slotDecided(granted: Bool) -> Action {
        switch state {
        case .idle, .waitingForSlot, .backingOff: break
        default: return .none
        }
        guard granted else { return finish(.fail(.unavailable(retryAfter: 1))) }
        return beginTry()
    }

    private mutating func beginTry() -> Action {
        state = .connecting
        requestComplete = false
        return .askBreaker
    }

    /// The breaker's answer for the try: `refusedFor` how long when it is open.
    mutating func breakerAnswered(refusedFor wait: Duration?, now: NIODeadline) -> Action {
        guard case .connecting = state else { return .none }
        if let wait { return finish(.fail(.unavailable(retryAfter: wait.wholeSecondsRoundedUp))) }
        guard deadline > now else { return tryFailed(.timedOut, retry: nil) }
        return .leaseConnection
    }

    // MARK: - The connection

    /// A connection is ready for the try: the request goes out.
    mutating func connected() -> Action {
        guard case .connecting = state else { return .none }
        state = .awaitingHead
        switch body {
        case .none:
            requestComplete = true
            return .send(.bodyless, wakeAt: deadline)
        case .whole:
            requestComplete = true
            return .send(.whole, wakeAt: deadline)
        case .streamed:
            let chunks = pendingChunks
            pendingChunks.removeAll()
            if !chunks.isEmpty { bodyConsumed = true }
            requestComplete = pendingEnd
            return .send(.streamed(chunks: chunks, end: pendingEnd), wakeAt: deadline)
        }
    }

    /// The connection could not be opened (in time: `timedOut`); `anotherTarget` when the
    /// upstream has a target this call did not try yet.
    mutating func connectFailed(timedOut: Bool, anotherTarget: Bool, _ retry: RetryContext) -> Action {
        guard case .connecting = state else { return .none }
        if anotherTarget, !failedOver, !bodyConsumed {
            failedOver = true
            state = .backingOff
            return .endTry(TryEnd(outcome: .failure, targetFailed: true, connection: .keep, next: .retry(after: .zero, condition: .connectError)))
        }
        return tryFailed(.connectFailed(timedOut: timedOut), retry: retry)
    }

    /// Opening the connection took until the deadline.
    mutating func connectTimedOut() -> Action {
        guard case .connecting = state else { return .none }
        return tryFailed(.timedOut, retry: nil)
    }

    /// The response head arrived (interim answers are not given here).
    mutating func headArrived(_ head: HTTPResponseHead, _ retry: RetryContext) -> Action {
        guard case .awaitingHead = state else { return .none }
        let status = Int(head.status.code)
        if retries.on.contains(.status(status)), let wait = retryWait(retry) {
            return startRetry(after: wait, condition: .status(status), outcome: Self.outcome(status), targetFailed: Self.targetFailed(status), connection: .close)
        }
        lastProgress = retry.now
        if let declared = head.headers.first(name: "content-length").flatMap(Int.init), declared <= Self.wholeBodyLimit {
            // The breaker hears of this try when the body is in (or stalls).
            state = .readingWhole(head, nil)
            return .wake(at: lastProgress + bodyTimeout)
        }
        state = .streaming
        return .respondStreaming(head, outcome: Self.outcome(status), targetFailed: Self.targetFailed(status), wakeAt: lastProgress + bodyTimeout)
    }

    /// A part of the response body arrived.
    mutating func bodyArrived(_ chunk: ByteBuffer, now: NIODeadline) -> Action {
        switch state {
        case .readingWhole(let head, var body):
            lastProgress = now
            state = .finished  // no copy of the buffer while it grows
            if body == nil { body = chunk } else { body!.writeImmutableBuffer(chunk) }
            state = .readingWhole(head, body)
            return .none
        case .streaming:
            lastProgress = now
            return .deliver(chunk)
        default:
            return .none
        }
    }

    /// The response ended.
    mutating func responseEnded() -> Action {
        switch state {
        case .readingWhole(let head, let body):
            let whole = body.flatMap { $0.readableBytes > 0 ? $0 : nil }
            let status = Int(head.status.code)
            return finish(.respondWhole(head, whole), outcome: Self.outcome(status), targetFailed: Self.targetFailed(status), connection: .giveBack)
        case .streaming:
            return finish(.finishStream, connection: .giveBack)
        default:
            return .none
        }
    }

    /// The connection closed under the call; `wasPooled` when it had served earlier requests,
    /// `anotherTarget` when the upstream has a target this call did not try yet.
    mutating func connectionClosed(wasPooled: Bool, anotherTarget: Bool) -> Action {
        switch state {
        case .awaitingHead where wasPooled && !bodyConsumed:
            // Closed by the upstream just before it was used: a fresh one, not a retry.
            state = .connecting
            return .endTry(TryEnd(outcome: nil, targetFailed: nil, connection: .keep, next: .reconnect))
        case .awaitingHead where retryable && anotherTarget && !failedOver && !bodyConsumed,
            .readingWhole where retryable && anotherTarget && !failedOver && !bodyConsumed:
            // Nothing reached the partner and the request may go twice: once more, elsewhere.
            failedOver = true
            state = .backingOff
            return .endTry(TryEnd(outcome: .failure, targetFailed: true, connection: .close, next: .retry(after: .zero, condition: .connectionBroke)))
        case .awaitingHead, .readingWhole:
            return tryFailed(.broke, retry: nil)
        case .streaming:
            return finish(.breakOff(.closed), connection: .keep)
        default:
            return .none
        }
    }

    /// The connection's timer went off: a deadline or `body_timeout` may have passed.
    mutating func timerFired(now: NIODeadline) -> Action {
        switch state {
        case .awaitingHead:
            return deadline <= now ? tryFailed(.timedOut, retry: nil) : .wake(at: deadline)
        case .readingWhole:
            // A small body is read before its head is forwarded: a stall there is still a 504.
            return lastProgress + bodyTimeout <= now ? tryFailed(.timedOut, retry: nil) : .wake(at: lastProgress + bodyTimeout)
        case .streaming:
            return lastProgress + bodyTimeout <= now ? finish(.breakOff(.stalled), connection: .close) : .wake(at: lastProgress + bodyTimeout)
        default:
            return .none
        }
    }

    /// The backoff before a retry is over: the next try takes its slot.
    mutating func backoffElapsed() -> Action {
        guard case .backingOff = state else { return .none }
        return .acquireSlot
    }

    // MARK: - The partner's side

    /// A chunk of the streamed request body: written now, kept for the next try, or refused
    /// (the upstream answered, or the call ended, before the body was complete).
    mutating func sendBody(_ chunk: ByteBuffer, promise: EventLoopPromise<Void>?) -> Action {
        switch state {
        case .awaitingHead:
            bodyConsumed = true
            return .writeChunk(chunk, promise)
        case .idle, .waitingForSlot, .connecting, .backingOff:
            pendingChunks.append((chunk, promise))
            return .none
        case .readingWhole, .streaming, .finished:
            return .refuseChunk(promise)
        }
    }

    /// The streamed request body is complete.
    mutating func endBody() -> Action {
        switch state {
        case .awaitingHead:
            requestComplete = true
            return .writeEnd
        case .idle, .waitingForSlot, .connecting, .backingOff:
            pendingEnd = true
            return .none
        case .readingWhole, .streaming, .finished:
            return .none
        }
    }

    /// The partner went away: the call ends with no verdict for the breaker.
    mutating func cancel() -> Action {
        switch state {
        case .finished:
            return .none
        case .awaitingHead, .readingWhole, .streaming:
            return finish(.cancelled, outcome: .cancelled, connection: .close)
        default:
            return finish(.cancelled, outcome: .cancelled)
        }
    }

    /// Chunks that waited for a try when the call ended: their promises fail.
    mutating func takePendingChunks() -> [(ByteBuffer, EventLoopPromise<Void>?)] {
        defer { pendingChunks.removeAll() }
        return pendingChunks
    }

    // MARK: - Outcomes

    private enum TryFailure {
        case connectFailed(timedOut: Bool)
        case broke
        case timedOut
    }

    /// A try failed before a response head could be delivered: retried when that is allowed.
    private mutating func tryFailed(_ failure: TryFailure, retry: RetryContext?) -> Action {
        let connection: ConnectionFate = if case .connecting = state { .keep } else { .close }
        switch failure {
        case .connectFailed(let timedOut):
            if retries.on.contains(.connectError), let retry, let wait = retryWait(retry) {
                return startRetry(after: wait, condition: .connectError, outcome: .failure, targetFailed: true, connection: connection)
            }
            return finish(.fail(timedOut ? .timeout : .unreachable), outcome: .failure, targetFailed: true, connection: connection)
        case .broke:
            return finish(.fail(.unreachable), outcome: .failure, targetFailed: true, connection: connection)
        case .timedOut:
            return finish(.fail(.timeout), outcome: .failure, targetFailed: true, connection: connection)
        }
    }

    /// The wait before the next try, or nil when no retry is allowed: attempts left, a request
    /// that may be sent twice, its body still sendable, time left before the deadline, budget.
    private func retryWait(_ retry: RetryContext) -> TimeAmount? {
        guard retried < retries.attempts, retryable, !bodyConsumed else { return nil }
        let wait = TimeAmount(retry.allowance.backoff(before: retried + 1))
        guard retry.now + wait < deadline, retry.allowance.takeRetry() else { return nil }
        return wait
    }

    private mutating func startRetry(
        after wait: TimeAmount, condition: UpstreamPolicy.RetryCondition, outcome: Outcome, targetFailed: Bool, connection: ConnectionFate
    ) -> Action {
        retried += 1
        state = .backingOff
        return .endTry(TryEnd(outcome: outcome, targetFailed: targetFailed, connection: connection, next: .retry(after: wait, condition: condition)))
    }

    /// The call is over.
    private mutating func finish(_ next: Next, outcome: Outcome? = nil, targetFailed: Bool? = nil, connection: ConnectionFate = .keep) -> Action {
        state = .finished
        let fate: ConnectionFate = connection == .giveBack && !requestComplete ? .close : connection
        return .endTry(TryEnd(outcome: outcome, targetFailed: targetFailed, connection: fate, next: next))
    }

    /// 5xx answers count against the upstream.
    static func outcome(_ status: Int) -> Outcome {
        status >= 500 ? .failure : .success
    }

    /// Only 502, 503 and 504 count against a target: they say the target (or what is behind
    /// it) could not answer; a 4xx or another 5xx is an answer.
    static func targetFailed(_ status: Int) -> Bool {
        (502...504).contains(status)
    }

    /// Which retry this is (for the log line).
    var retriesSoFar: Int { retried }
}

/// The upstream's side of a retry decision (`UpstreamRuntime`): its budget and its backoff.
protocol RetryAllowance: AnyObject {
    /// Takes a retry from the budget (asked only when everything else allows one).
    func takeRetry() -> Bool
    /// The full-jitter backoff before retry `number` (1, 2, …).
    func backoff(before number: Int) -> Duration
}
