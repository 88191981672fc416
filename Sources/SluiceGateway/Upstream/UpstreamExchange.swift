import Logging
import NIOCore
import NIOHTTP1
import Synchronization

/// What an upstream answered, ready to be forwarded.
struct UpstreamAnswer: Sendable {
    typealias Chunks = NIOThrowingAsyncSequenceProducer<
        ByteBuffer, any Error, NIOAsyncSequenceProducerBackPressureStrategies.HighLowWatermark, ResponseBackPressure
    >

    enum Body: Sendable {
        /// The whole body (a small one, read before forwarding), or none.
        case whole(ByteBuffer?)
        /// Chunks as they arrive; the sequence fails with `UpstreamStalled` when the upstream
        /// stalls, or another error when it breaks off.
        case streaming(Chunks)
    }

    let status: HTTPResponseStatus
    let headers: HTTPHeaders
    let body: Body
}

/// The body of an upstream stopped arriving for longer than `body_timeout`.
struct UpstreamStalled: Error {}

/// The upstream closed the connection before the end of the body.
struct UpstreamClosedMidBody: Error {}

/// Runs an `UpstreamCall` (which lives on the partner's event loop) for the async responder:
/// `perform` returns the answer once its head is in, the partner's streamed body is pumped to
/// the upstream with write back-pressure, and the partner going away cancels the call.
final class UpstreamExchange: Sendable {
    private let runtime: UpstreamRuntime
    private let timeout: Duration
    private let disconnect: DisconnectSignal?
    private let channel: any Channel
    private let logger: Logger
    private let bridge: NIOLoopBoundBox<CallBridge?>
    /// Set on the event loop once nothing of the exchange runs any more, so `finish()` need not
    /// hop there (the common case: a small answer read whole).
    private let ended = EndedFlag()

    init(runtime: UpstreamRuntime, timeout: Duration, disconnect: DisconnectSignal?, channel: any Channel, logger: Logger) {
        self.runtime = runtime
        self.timeout = timeout
        self.disconnect = disconnect
        self.channel = channel
        self.logger = logger
        self.bridge = .makeEmptyBox(valueType: CallBridge.self, eventLoop: channel.eventLoop)
    }

    /// Calls the upstream (with retries) until there is an answer to forward or a failure.
    /// - Parameter streamedBody: The partner's body when it is streamed (`request.body == .streamed`).
    func perform(_ request: UpstreamRequest, streamedBody: RequestBodyStream?) async -> Result<UpstreamAnswer, UpstreamFailure> {
        let eventLoop = channel.eventLoop
        let (runtime, timeout, logger, bridge, ended) = (runtime, timeout, logger, bridge, ended)
        /// Runs on the event loop after the call started, whichever thread hears of the partner leaving.
        let clientGone: @Sendable () -> Void = { eventLoop.execute { bridge.value?.clientGone() } }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<UpstreamAnswer, UpstreamFailure>, Never>) in
                eventLoop.execute {
                    let started = CallBridge(continuation: continuation, body: streamedBody, eventLoop: eventLoop, ended: ended)
                    bridge.value = started
                    started.start(runtime: runtime, request: request, timeout: timeout, logger: logger)
                }
                if let disconnect {
                    disconnect.arm(onClose: clientGone)
                } else {
                    channel.closeFuture.whenComplete { _ in clientGone() }
                }
            }
        } onCancel: {
            clientGone()
        }
    }

    /// Ends the exchange: stops the upstream call if it still runs (giving its bulkhead slot back).
    func finish() {
        disconnect?.disarm()
        guard !ended.flag.load(ordering: .acquiring) else { return }
        let bridge = bridge
        channel.eventLoop.execute { bridge.value?.end() }
    }
}

/// Whether an exchange's call and body pump have both stopped.
private final class EndedFlag: Sendable {
    let flag = Atomic(false)
}

/// The producer's back-pressure reaches the upstream connection: reads pause while the partner
/// is slow, and stop when the response is no longer wanted.
struct ResponseBackPressure: NIOAsyncSequenceProducerDelegate {
    fileprivate let bridge: NIOLoopBound<CallBridge>

    func produceMore() {
        let bridge = bridge
        bridge.eventLoop.execute { bridge.value.call?.pauseResponse(false) }
    }

    func didTerminate() {
        let bridge = bridge
        bridge.eventLoop.execute { bridge.value.end() }
    }
}

/// The event-loop side of an `UpstreamExchange`: delegate of the call, source of the response
/// body, owner of the request-body pump.
private final class CallBridge: UpstreamCallDelegate {
    private(set) var call: UpstreamCall?
    private var continuation: CheckedContinuation<Result<UpstreamAnswer, UpstreamFailure>, Never>?
    private var chunks: UpstreamAnswer.Chunks.Source?
    private let body: RequestBodyStream?
    private var pump: Task<Void, Never>?
    private let eventLoop: any EventLoop
    private let ended: EndedFlag

    init(
        continuation: CheckedContinuation<Result<UpstreamAnswer, UpstreamFailure>, Never>, body: RequestBodyStream?, eventLoop: any EventLoop,
        ended: EndedFlag
    ) {
        self.continuation = continuation
        self.body = body
        self.eventLoop = eventLoop
        self.ended = ended
    }

    func start(runtime: UpstreamRuntime, request: UpstreamRequest, timeout: Duration, logger: Logger) {
        let call = UpstreamCall(runtime: runtime, request: request, timeout: timeout, eventLoop: eventLoop, logger: logger, delegate: self)
        self.call = call
        call.start()
    }

    /// The partner went away (or stopped waiting).
    func clientGone() {
        resume(.failure(.clientGone))
        chunks?.finish(CancellationError())
        end()
    }

    /// Stops the call and the pump; the bridge is done.
    func end() {
        call?.cancel()
        call = nil
        pump?.cancel()
        pump = nil
        ended.flag.store(true, ordering: .releasing)
    }

    /// The call ended by itself: without a body pump there is nothing left to stop.
    private func callEnded() {
        if pump == nil { end() }
    }

    private func resume(_ result: Result<UpstreamAnswer, UpstreamFailure>) {
        continuation?.resume(returning: result)
        continuation = nil
    }

    // MARK: - UpstreamCallDelegate

    func upstreamCallWantsBody(_ call: UpstreamCall) {
        guard pump == nil, let body else { return }
        let target = NIOLoopBound(self, eventLoop: eventLoop)
        let eventLoop = eventLoop
        pump = Task {
            do {
                for try await chunk in body {
                    try await eventLoop.flatSubmit {
                        let promise = eventLoop.makePromise(of: Void.self)
                        target.value.call?.sendBody(chunk, promise: promise)
                        if target.value.call == nil { promise.fail(CancellationError()) }
                        return promise.futureResult
                    }.get()
                }
                eventLoop.execute { target.value.call?.endBody() }
            } catch let failure as RequestBodyFailure {
                eventLoop.execute { target.value.requestBodyFailed(failure) }
            } catch {
                // The call ended first; it has its own outcome.
            }
        }
    }

    private func requestBodyFailed(_ failure: RequestBodyFailure) {
        resume(.failure(.requestBody(failure)))
        chunks?.finish(failure)
        end()
    }

    func upstreamCall(_ call: UpstreamCall, respondedWith head: HTTPResponseHead, body: UpstreamResponseBody) {
        switch body {
        case .whole(let buffer):
            resume(.success(UpstreamAnswer(status: head.status, headers: head.headers, body: .whole(buffer))))
            callEnded()
        case .streaming:
            let produced = UpstreamAnswer.Chunks.makeSequence(
                backPressureStrategy: .init(lowWatermark: 2, highWatermark: 8),
                finishOnDeinit: false,
                delegate: ResponseBackPressure(bridge: NIOLoopBound(self, eventLoop: eventLoop))
            )
            chunks = produced.source
            resume(.success(UpstreamAnswer(status: head.status, headers: head.headers, body: .streaming(produced.sequence))))
        }
    }

    func upstreamCall(_ call: UpstreamCall, received chunk: ByteBuffer) {
        if chunks?.yield(chunk) == .stopProducing { call.pauseResponse(true) }
    }

    func upstreamCallFinished(_ call: UpstreamCall) {
        chunks?.finish()
        chunks = nil
        callEnded()
    }

    func upstreamCall(_ call: UpstreamCall, failed failure: UpstreamFailure) {
        resume(.failure(failure))
        callEnded()
    }

    func upstreamCall(_ call: UpstreamCall, brokeOff reason: UpstreamBreak) {
        switch reason {
        case .stalled: chunks?.finish(UpstreamStalled())
        case .closed: chunks?.finish(UpstreamClosedMidBody())
        }
        chunks = nil
        callEnded()
    }
}
