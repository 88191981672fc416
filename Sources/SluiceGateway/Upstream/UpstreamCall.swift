import Logging
import NIOCore
import NIOHTTP1
import SluiceCore

/// The request an upstream call sends on each try.
struct UpstreamRequest {
    enum Body {
        case none
        /// Kept whole, so every try can send it.
        case whole(ByteBuffer)
        /// Streamed from the partner as it arrives (`UpstreamCallDelegate.upstreamCallWantsBody`).
        case streamed
    }

    var head: HTTPRequestHead
    var body: Body
    /// Whether the request may be sent more than once (idempotent method or `Idempotency-Key`).
    var retryable: Bool
}

/// Why no upstream answer can be forwarded.
enum UpstreamFailure: Error, Equatable {
    /// Breaker open or bulkhead full: 503 with Retry-After (whole seconds).
    case unavailable(retryAfter: Int)
    /// Connect or request timeout: 504.
    case timeout
    /// Refused, reset, or closed before answering: 502.
    case unreachable
}

/// How the body of a delivered response comes.
enum UpstreamResponseBody {
    /// Read whole before the head was delivered (declared ≤ 64 KiB); nil when empty.
    case whole(ByteBuffer?)
    /// Follows in `received` calls, then `upstreamCallFinished` or `brokeOff`.
    case streaming
}

/// Why a response stopped after its head went out to the partner.
enum UpstreamBreak: Error {
    /// Nothing arrived for longer than `body_timeout`.
    case stalled
    /// The upstream closed the connection before the end of the body.
    case closed
}

/// Hears how an upstream call goes; every call comes on the partner's event loop.
protocol UpstreamCallDelegate: AnyObject {
    /// A try is ready for the streamed request body: send it (`sendBody`, `endBody`).
    func upstreamCallWantsBody(_ call: UpstreamCall)
    func upstreamCall(_ call: UpstreamCall, respondedWith head: HTTPResponseHead, body: UpstreamResponseBody)
    func upstreamCall(_ call: UpstreamCall, received chunk: ByteBuffer)
    /// A streamed response is complete.
    func upstreamCallFinished(_ call: UpstreamCall)
    /// There is no answer to forward.
    func upstreamCall(_ call: UpstreamCall, failed failure: UpstreamFailure)
    /// The response broke off after its head was delivered.
    func upstreamCall(_ call: UpstreamCall, brokeOff reason: UpstreamBreak)
}

/// One partner request's conversation with its upstream (SPEC §3 timeouts and breakers, §4.2),
/// bound to the partner's event loop:
///
/// - a bulkhead slot is taken first (waiting at most `queue_timeout`) and held until the end;
/// - every try asks the circuit breaker first and reports its outcome at the response head
///   (5xx, connect errors, timeouts and broken connections fail; a partner that went away gives
///   no verdict);
/// - tries share the route's request timeout: no response head by then is a 504;
/// - a failed try is retried only for requests that may be sent twice, on the listed
///   conditions, while the body can be sent again (none, kept whole, or nothing of it streamed),
///   within the retry budget, after a full-jitter backoff;
/// - a response body that stops for `body_timeout` is cut off; one with a declared length up
///   to 64 KiB is read whole before its head is delivered, so a stall there is still a 504;
/// - on a connection, both deadlines are watched by the connection's `LazyTimer`, which a busy
///   connection schedules about once per timeout, not once per request.
final class UpstreamCall: UpstreamConnectionUser {
    /// Response bodies up to this size (declared) are read whole before forwarding.
    static let wholeBodyLimit = 64 << 10
    /// Request bodies up to this size (declared) are kept for retries when a retry is possible.
    static let replayableBodyLimit = 64 << 10

    private enum State {
        case idle
        case waitingForSlot(waiter: UInt64)
        case connecting
        case awaitingHead(UpstreamConnection)
        case readingWhole(UpstreamConnection, HTTPResponseHead, ByteBuffer?)
        case streaming(UpstreamConnection)
        case backingOff(Scheduled<Void>)
        case finished
    }

    let runtime: UpstreamRuntime
    private let request: UpstreamRequest
    private let eventLoop: any EventLoop
    private let logger: Logger
    private weak var delegate: (any UpstreamCallDelegate)?
    private var state = State.idle
    private let deadline: NIODeadline
    private var holdsSlot = false
    private var ticket: CircuitBreaker<ContinuousClock.Instant>.Ticket?
    private var tryStarted = ContinuousClock.now
    private var retried = 0
    private var requestComplete = false
    /// The head deadline while connecting; on a connection, the connection's `LazyTimer` wakes the call.
    private var connectTimer: Scheduled<Void>?
    /// When the response body last moved (for `body_timeout`).
    private var lastProgress = NIODeadline.now()
    /// Set once a try of a streamed body sent anything: that body cannot be sent again.
    private var bodyConsumed = false
    /// Chunks of the streamed body that came while no try was sending (connecting, backing off).
    private var pendingChunks: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    /// The streamed body ended while no try was sending.
    private var pendingEnd = false

    init(runtime: UpstreamRuntime, request: UpstreamRequest, timeout: Duration, eventLoop: any EventLoop, logger: Logger, delegate: any UpstreamCallDelegate) {
        self.runtime = runtime
        self.request = request
        self.eventLoop = eventLoop
        self.logger = logger
        self.delegate = delegate
        self.deadline = .now() + TimeAmount(timeout)
    }

    // MARK: - Driving the call (from the partner's side)

    func start() {
        guard case .idle = state else { return }
        if runtime.bulkhead.tryAcquire() {
            holdsSlot = true
            runtime.recordRequest()
            return beginTry()
        }
        let call = NIOLoopBound(self, eventLoop: eventLoop)
        switch runtime.bulkhead.acquire(on: eventLoop, resume: { granted in call.value.slotDecided(granted) }) {
        case .acquired:
            holdsSlot = true
            runtime.recordRequest()
            beginTry()
        case .refused:
            finish(with: .unavailable(retryAfter: 1))
        case .queued(let waiter):
            state = .waitingForSlot(waiter: waiter)
        }
    }

    /// Sends (and flushes) a chunk of the streamed request body; `promise` completes when it is
    /// written, which is the sender's back-pressure. Chunks that come between tries wait for the
    /// next one; after the call ended they fail the promise.
    func sendBody(_ chunk: ByteBuffer, promise: EventLoopPromise<Void>?) {
        switch state {
        case .awaitingHead(let connection):
            bodyConsumed = true
            connection.write(.body(.byteBuffer(chunk)), promise: promise)
            connection.flush()
        case .idle, .waitingForSlot, .connecting, .backingOff:
            pendingChunks.append((chunk, promise))
        case .readingWhole, .streaming, .finished:
            // The upstream answered (or the call ended) before the body was complete.
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    /// The streamed request body is complete.
    func endBody() {
        switch state {
        case .awaitingHead(let connection):
            requestComplete = true
            connection.write(.end(nil), promise: nil)
            connection.flush()
        case .idle, .waitingForSlot, .connecting, .backingOff:
            pendingEnd = true
        case .readingWhole, .streaming, .finished:
            break
        }
    }

    /// Stops or resumes reading the response while the partner cannot take more of it.
    func pauseResponse(_ paused: Bool) {
        switch state {
        case .streaming(let connection), .readingWhole(let connection, _, _), .awaitingHead(let connection):
            connection.pauseReading(paused)
        default:
            break
        }
    }

    /// The partner went away: drops the upstream exchange and gives the slot back.
    func cancel() {
        switch state {
        case .waitingForSlot(let waiter):
            runtime.bulkhead.cancel(waiter)
        case .awaitingHead(let connection), .readingWhole(let connection, _, _), .streaming(let connection):
            connection.user = nil
            connection.close()
        case .backingOff(let timer):
            timer.cancel()
        case .idle, .connecting, .finished:
            break
        }
        if let ticket { runtime.record(ticket, .cancelled, duration: ContinuousClock.now - tryStarted) }
        ticket = nil
        end()
    }

    // MARK: - Tries

    private func slotDecided(_ granted: Bool) {
        guard case .waitingForSlot = state else {
            if granted { runtime.bulkhead.release() }
            return
        }
        guard granted else { return finish(with: .unavailable(retryAfter: 1)) }
        holdsSlot = true
        runtime.recordRequest()
        beginTry()
    }

    private func beginTry() {
        switch runtime.permission() {
        case .refused(let wait):
            return finish(with: .unavailable(retryAfter: wait.wholeSecondsRoundedUp))
        case .allowed(let allowed):
            ticket = allowed
        }
        tryStarted = .now
        requestComplete = false
        state = .connecting
        let remaining = deadline - .now()
        guard remaining > .zero else { return tryEnded(.timedOut) }
        leaseConnection()
    }

    /// Sends on an idle connection of this event loop, or on a new one once it is open.
    private func leaseConnection() {
        switch runtime.client.connections.lease(on: eventLoop) {
        case .ready(let connection):
            send(on: connection)
        case .connecting(let future):
            let call = NIOLoopBound(self, eventLoop: eventLoop)
            connectTimer = eventLoop.scheduleTask(deadline: deadline) { call.value.connectTimedOut() }
            future.whenComplete { result in
                switch result {
                case .success(let connection): call.value.connected(connection)
                case .failure(let error): call.value.connectFailed(error)
                }
            }
        }
    }

    private func connected(_ connection: UpstreamConnection) {
        connectTimer?.cancel()
        connectTimer = nil
        guard case .connecting = state else {
            connection.close()  // the call ended meanwhile
            return
        }
        send(on: connection)
    }

    private func connectFailed(_ error: any Error) {
        guard case .connecting = state else { return }
        tryEnded(.connectFailed(timedOut: Self.isConnectTimeout(error)))
    }

    private func send(on connection: UpstreamConnection) {
        connection.user = self
        connection.requestsServed += 1
        state = .awaitingHead(connection)
        connection.timer.wake(noLaterThan: deadline)
        connection.write(.head(request.head), promise: nil)
        switch request.body {
        case .none:
            requestComplete = true
            connection.write(.end(nil), promise: nil)
            connection.flush()
        case .whole(let body):
            requestComplete = true
            connection.write(.body(.byteBuffer(body)), promise: nil)
            connection.write(.end(nil), promise: nil)
            connection.flush()
        case .streamed:
            for (chunk, promise) in pendingChunks {
                bodyConsumed = true
                connection.write(.body(.byteBuffer(chunk)), promise: promise)
            }
            pendingChunks.removeAll()
            if pendingEnd {
                requestComplete = true
                connection.write(.end(nil), promise: nil)
            }
            connection.flush()
            if !pendingEnd { delegate?.upstreamCallWantsBody(self) }
        }
    }

    private func connectTimedOut() {
        connectTimer = nil
        guard case .connecting = state else { return }
        tryEnded(.timedOut)
    }

    /// The connection's timer woke the call: the head deadline or `body_timeout` may have passed.
    func connectionTimerFired(_ connection: UpstreamConnection) {
        let now = NIODeadline.now()
        switch state {
        case .awaitingHead:
            if deadline <= now { return tryEnded(.timedOut) }
            connection.timer.wake(noLaterThan: deadline)
        case .readingWhole:
            // A small body is read before its head is forwarded: a stall there is still a 504.
            if lastProgress + bodyTimeout <= now { return tryEnded(.timedOut) }
            connection.timer.wake(noLaterThan: lastProgress + bodyTimeout)
        case .streaming:
            if lastProgress + bodyTimeout <= now { return stalledMidBody(connection) }
            connection.timer.wake(noLaterThan: lastProgress + bodyTimeout)
        default:
            break
        }
    }

    private var bodyTimeout: TimeAmount { TimeAmount(runtime.policy.bodyTimeout) }

    // MARK: - The connection's events

    func connection(_ connection: UpstreamConnection, received part: HTTPClientResponsePart) {
        switch (state, part) {
        case (.awaitingHead, .head(let head)):
            guard head.status.code >= 200 else { return }  // 100 Continue and other interim answers
            headArrived(head, on: connection)
        case (.readingWhole(_, let head, var body), .body(let chunk)):
            lastProgress = .now()
            if body == nil { body = chunk } else { body!.writeImmutableBuffer(chunk) }
            state = .readingWhole(connection, head, body)
        case (.readingWhole(_, let head, let body), .end):
            recordTicket(Self.outcome(Int(head.status.code)))
            state = .finished
            release(connection)
            end()
            delegate?.upstreamCall(self, respondedWith: head, body: .whole(body.flatMap { $0.readableBytes > 0 ? $0 : nil }))
        case (.streaming, .body(let chunk)):
            lastProgress = .now()
            delegate?.upstreamCall(self, received: chunk)
        case (.streaming, .end):
            state = .finished
            release(connection)
            end()
            delegate?.upstreamCallFinished(self)
        default:
            break
        }
    }

    func connectionClosed(_ connection: UpstreamConnection) {
        switch state {
        case .awaitingHead:
            // A pooled connection the upstream closed just before we used it: try a fresh one
            // (not counted as a retry) when nothing of the request is lost by doing so.
            if connection.requestsServed > 1, !bodyConsumed {
                state = .connecting
                return leaseConnection()
            }
            tryEnded(.broke)
        case .readingWhole:
            tryEnded(.broke)
        case .streaming:
            state = .finished
            end()
            delegate?.upstreamCall(self, brokeOff: .closed)
        default:
            break
        }
    }


    // MARK: - Outcomes

    private enum TryOutcome {
        case connectFailed(timedOut: Bool)
        case broke
        case timedOut
    }

    private func headArrived(_ head: HTTPResponseHead, on connection: UpstreamConnection) {
        let status = Int(head.status.code)
        if runtime.policy.retries.on.contains(.status(status)), let wait = retryWait() {
            recordTicket(Self.outcome(status))
            connection.user = nil
            connection.close()  // its body is not wanted
            return retry(after: wait, condition: .status(status))
        }
        let declared = head.headers.first(name: "content-length").flatMap(Int.init)
        lastProgress = .now()
        connection.timer.wake(noLaterThan: lastProgress + bodyTimeout)
        if let declared, declared <= Self.wholeBodyLimit {
            // The breaker hears of this try when the body is in (or stalls).
            state = .readingWhole(connection, head, nil)
        } else {
            recordTicket(Self.outcome(status))
            state = .streaming(connection)
            delegate?.upstreamCall(self, respondedWith: head, body: .streaming)
        }
    }

    private func stalledMidBody(_ connection: UpstreamConnection) {
        connection.user = nil
        connection.close()
        state = .finished
        end()
        delegate?.upstreamCall(self, brokeOff: .stalled)
    }

    /// A try failed before a response head could be delivered.
    private func tryEnded(_ outcome: TryOutcome) {
        switch state {
        case .awaitingHead(let connection), .readingWhole(let connection, _, _):
            connection.user = nil
            connection.close()
        default:
            break
        }
        connectTimer?.cancel()
        connectTimer = nil
        recordTicket(.failure)
        switch outcome {
        case .connectFailed(let timedOut):
            if runtime.policy.retries.on.contains(.connectError), let wait = retryWait() {
                return retry(after: wait, condition: .connectError)
            }
            finish(with: timedOut ? .timeout : .unreachable)
        case .broke:
            finish(with: .unreachable)
        case .timedOut:
            finish(with: .timeout)
        }
    }

    /// The wait before the next try, or nil when no retry is allowed: attempts left, a request
    /// that may be sent twice, its body still sendable, time left before the deadline, budget.
    private func retryWait() -> TimeAmount? {
        let retries = runtime.policy.retries
        guard retried < retries.attempts, request.retryable, !bodyConsumed else { return nil }
        var random = SystemRandomNumberGenerator()
        let wait = TimeAmount(RetryRules.backoff(retry: retried + 1, min: retries.backoffMin, max: retries.backoffMax, using: &random))
        guard NIODeadline.now() + wait < deadline, runtime.takeRetry() else { return nil }
        return wait
    }

    private func retry(after wait: TimeAmount, condition: UpstreamPolicy.RetryCondition) {
        retried += 1
        logger.info(
            "retrying upstream call",
            metadata: ["upstream": .string(runtime.name), "retry": .stringConvertible(retried), "condition": .string(condition.description)]
        )
        let call = NIOLoopBound(self, eventLoop: eventLoop)
        state = .backingOff(eventLoop.scheduleTask(in: wait) { call.value.beginTry() })
    }

    private func recordTicket(_ outcome: CircuitBreaker<ContinuousClock.Instant>.Outcome) {
        guard let ticket else { return }
        self.ticket = nil
        runtime.record(ticket, outcome, duration: ContinuousClock.now - tryStarted)
    }

    private func finish(with failure: UpstreamFailure) {
        state = .finished
        end()
        delegate?.upstreamCall(self, failed: failure)
    }

    /// Returns a connection whose exchange completed to the pool.
    private func release(_ connection: UpstreamConnection) {
        connection.user = nil
        connection.pauseReading(false)
        if requestComplete {
            runtime.client.connections.giveBack(connection)
        } else {
            connection.close()
        }
    }

    /// Stops timers and gives the bulkhead slot back.
    private func end() {
        if case .finished = state {} else { state = .finished }
        for (_, promise) in pendingChunks { promise?.fail(ChannelError.ioOnClosedChannel) }
        pendingChunks.removeAll()
        connectTimer?.cancel()
        connectTimer = nil
        if holdsSlot {
            holdsSlot = false
            runtime.bulkhead.release()
        }
    }

    /// 5xx answers count against the upstream.
    private static func outcome(_ status: Int) -> CircuitBreaker<ContinuousClock.Instant>.Outcome {
        status >= 500 ? .failure : .success
    }

    private static func isConnectTimeout(_ error: any Error) -> Bool {
        if let channelError = error as? ChannelError, case .connectTimeout = channelError { return true }
        return false
    }

}
