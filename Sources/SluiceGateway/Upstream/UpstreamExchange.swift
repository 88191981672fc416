#if canImport(Glibc)
import Glibc
#endif
import AsyncAlgorithms
import AsyncHTTPClient
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import SluiceCore
import Synchronization

/// What an upstream answered, ready to be forwarded.
struct UpstreamAnswer: Sendable {
    enum Body: Sendable {
        /// The whole body (a small one, read before forwarding), or none.
        case whole(ByteBuffer?)
        /// Chunks as they arrive; the channel fails when the upstream stalls or breaks off.
        case streaming(AsyncThrowingChannel<ByteBuffer, any Error>)
    }

    let status: HTTPResponseStatus
    let headers: HTTPHeaders
    let body: Body
}

/// Why no upstream answer can be forwarded.
enum UpstreamFailure: Error, Equatable {
    /// Breaker open or bulkhead full: 503 with Retry-After (whole seconds).
    case unavailable(retryAfter: Int)
    /// Connect or request timeout: 504.
    case timeout
    /// Refused or reset: 502.
    case unreachable
    /// The partner went away: nobody to answer.
    case clientGone
    /// The partner's request body could not be read to its end.
    case requestBody(RequestBodyFailure)
}

/// The body of an upstream stopped arriving for longer than `body_timeout`.
struct UpstreamStalled: Error {}

/// One request's conversation with its upstream (SPEC §3 timeouts and breakers, §4.2):
///
/// - a bulkhead slot is taken first (waiting at most `queue_timeout`) and held until `finish()`;
/// - every try asks the circuit breaker first and reports its outcome (5xx, connect errors and
///   timeouts are failures; a partner that went away is no verdict);
/// - tries share the route's request timeout; each gets what is left of it;
/// - a failed try is retried only for idempotent requests (or ones with an `Idempotency-Key`),
///   on the listed conditions, when the body can be sent again (none, kept because it was small,
///   or nothing of it streamed yet), within the retry budget, after a full-jitter backoff;
/// - the upstream is read on a task that is cancelled when the partner disconnects or the body
///   stops flowing for `body_timeout`; a small body (≤ 64 KiB declared) is read whole there.
final class UpstreamExchange: Sendable {
    /// Response bodies up to this size (declared) are read whole before forwarding.
    static let wholeBodyLimit = 64 << 10
    /// Request bodies up to this size (declared) are kept for retries when a retry is possible.
    static let replayableBodyLimit = 64 << 10

    private struct State {
        var holdsSlot = false
        var reader: Task<Void, Never>?
        /// The current try's body timer.
        var stall: StallTimer?
    }

    /// How one try ended, before the retry rules.
    private enum TryOutcome {
        case answered(UpstreamAnswer)
        case connectFailed(timedOut: Bool)
        case broke
        case timedOut
        case clientGone
        case requestBody(RequestBodyFailure)
    }

    private let runtime: UpstreamRuntime
    private let timeout: Duration
    private let disconnect: DisconnectSignal?
    private let channel: any Channel
    private let logger: Logger
    private let state = Mutex(State())

    init(runtime: UpstreamRuntime, timeout: Duration, disconnect: DisconnectSignal?, channel: any Channel, logger: Logger) {
        self.runtime = runtime
        self.timeout = timeout
        self.disconnect = disconnect
        self.channel = channel
        self.logger = logger
    }

    /// Calls the upstream (with retries) until there is an answer to forward or a failure.
    /// - Parameters:
    ///   - streamedBody: The partner's body when it is streamed (so cannot be sent twice).
    ///   - retryable: Whether the request may be sent more than once.
    func perform(_ request: HTTPClientRequest, streamedBody: RequestBodyStream?, retryable: Bool) async -> Result<UpstreamAnswer, UpstreamFailure> {
        guard await runtime.bulkhead.acquire() else { return .failure(.unavailable(retryAfter: 1)) }
        state.withLock { $0.holdsSlot = true }
        runtime.recordRequest()
        let deadline = ContinuousClock.now + timeout
        let retries = runtime.policy.retries
        var retried = 0
        var random = SystemRandomNumberGenerator()
        while true {
            let ticket: CircuitBreaker<ContinuousClock.Instant>.Ticket
            switch runtime.permission() {
            case .refused(let wait): return .failure(.unavailable(retryAfter: Self.wholeSeconds(wait)))
            case .allowed(let allowed): ticket = allowed
            }
            let started = ContinuousClock.now
            let outcome = await attempt(request, deadline: deadline)
            let took = ContinuousClock.now - started

            // What this try means for retrying, and what to answer when there is no retry.
            let condition: UpstreamPolicy.RetryCondition?
            let result: Result<UpstreamAnswer, UpstreamFailure>
            switch outcome {
            case .answered(let answer):
                let status = Int(answer.status.code)
                runtime.record(ticket, status >= 500 ? .failure : .success, duration: took)
                (condition, result) = (.status(status), .success(answer))
            case .connectFailed(let timedOut):
                runtime.record(ticket, .failure, duration: took)
                (condition, result) = (.connectError, .failure(timedOut ? .timeout : .unreachable))
            case .broke:
                runtime.record(ticket, .failure, duration: took)
                (condition, result) = (nil, .failure(.unreachable))
            case .timedOut:
                runtime.record(ticket, .failure, duration: took)
                (condition, result) = (nil, .failure(.timeout))
            case .clientGone:
                runtime.record(ticket, .cancelled, duration: took)
                (condition, result) = (nil, .failure(.clientGone))
            case .requestBody(let bodyFailure):
                runtime.record(ticket, .cancelled, duration: took)
                (condition, result) = (nil, .failure(.requestBody(bodyFailure)))
            }
            let wait = RetryRules.backoff(retry: retried + 1, min: retries.backoffMin, max: retries.backoffMax, using: &random)
            guard let condition, retries.on.contains(condition), ContinuousClock.now + wait < deadline,
                canRetry(retried, streamedBody: streamedBody, retryable: retryable)
            else { return result }
            if case .success(let answer) = result { discard(answer) }
            retried += 1
            logger.info(
                "retrying upstream call",
                metadata: ["upstream": .string(runtime.name), "retry": .stringConvertible(retried), "condition": .string(condition.description)]
            )
            try? await Task.sleep(for: wait)
        }
    }

    /// Ends the exchange: stops reading the upstream and gives the bulkhead slot back.
    func finish() {
        disconnect?.disarm()
        let (reader, stall, heldSlot) = state.withLock { state in
            defer { state = State() }
            return (state.reader, state.stall, state.holdsSlot)
        }
        stall?.stop()
        reader?.cancel()
        if heldSlot { runtime.bulkhead.release() }
    }

    /// Attempts left, a request that may be sent twice, nothing of a streamed body sent, budget left.
    private func canRetry(_ retried: Int, streamedBody: RequestBodyStream?, retryable: Bool) -> Bool {
        retried < runtime.policy.retries.attempts && retryable && (streamedBody?.bytesRead ?? 0) == 0 && streamedBody?.failure == nil
            && runtime.takeRetry()
    }

    /// One try: the request, then either the small body read whole or a pump streaming the rest.
    private func attempt(_ request: HTTPClientRequest, deadline: ContinuousClock.Instant) async -> TryOutcome {
        let client = runtime.client.http
        let logger = logger
        let stall = StallTimer(timeout: runtime.policy.bodyTimeout, eventLoop: channel.eventLoop)
        let previous = state.withLock { state in
            defer { state.stall = stall }
            return state.stall
        }
        previous?.stop()
        let headDeadline = NIODeadline.now() + TimeAmount(deadline - .now)
        let head = Task { () throws -> (HTTPClientResponse, ByteBuffer?) in
            let response = try await client.execute(request, deadline: headDeadline, logger: logger)
            guard let length = response.headers.first(name: "content-length").flatMap(Int.init), length <= Self.wholeBodyLimit else {
                return (response, nil)
            }
            stall.start()
            return (response, try await response.body.collect(upTo: max(length, 1)))
        }
        stall.setAction { head.cancel() }
        cancelOnDisconnect { head.cancel() }
        let response: HTTPClientResponse
        let whole: ByteBuffer?
        do {
            (response, whole) = try await withTaskCancellationHandler { try await head.value } onCancel: { head.cancel() }
        } catch {
            return classify(error, stalled: stall.didStall)
        }
        if whole != nil || response.headers.first(name: "content-length") == "0" || [204, 304].contains(response.status.code) {
            return .answered(UpstreamAnswer(status: response.status, headers: response.headers, body: .whole(whole)))
        }
        let chunks = AsyncThrowingChannel<ByteBuffer, any Error>()
        let pump = Task {
            do {
                for try await chunk in response.body {
                    stall.progress()
                    await chunks.send(chunk)
                }
                chunks.finish()
            } catch {
                chunks.fail(stall.didStall ? UpstreamStalled() : error)
            }
        }
        state.withLock { $0.reader = pump }
        stall.setAction { pump.cancel() }
        stall.start()
        cancelOnDisconnect { pump.cancel() }
        return .answered(UpstreamAnswer(status: response.status, headers: response.headers, body: .streaming(chunks)))
    }

    /// Runs `cancel` when the partner goes away: the HTTP/1.1 connection's signal, or the HTTP/2 stream closing.
    private func cancelOnDisconnect(_ cancel: @escaping @Sendable () -> Void) {
        if let disconnect {
            disconnect.arm(onClose: cancel)
        } else {
            channel.closeFuture.whenComplete { _ in cancel() }
        }
    }

    /// Drops an answer that will be retried (its body is not wanted).
    private func discard(_ answer: UpstreamAnswer) {
        guard case .streaming = answer.body else { return }
        let reader = state.withLock { state in
            defer { state.reader = nil }
            return state.reader
        }
        reader?.cancel()
    }

    private func classify(_ error: any Error, stalled: Bool) -> TryOutcome {
        if stalled { return .timedOut }
        if error is CancellationError { return .clientGone }
        if let failure = error as? RequestBodyFailure { return .requestBody(failure) }
        if let clientError = error as? HTTPClientError {
            switch clientError {
            case .deadlineExceeded, .readTimeout, .writeTimeout: return .timedOut
            case .connectTimeout: return .connectFailed(timedOut: true)
            case .cancelled: return .clientGone
            default: return .broke
            }
        }
        if let channelError = error as? ChannelError, case .connectTimeout = channelError { return .connectFailed(timedOut: true) }
        if error is NIOConnectionError { return .connectFailed(timedOut: false) }
        if let ioError = error as? IOError, [ECONNREFUSED, EHOSTUNREACH, ENETUNREACH].contains(ioError.errnoCode) {
            return .connectFailed(timedOut: false)
        }
        return .broke
    }

    static func wholeSeconds(_ duration: Duration) -> Int {
        max(1, Int((Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18).rounded(.up)))
    }
}
