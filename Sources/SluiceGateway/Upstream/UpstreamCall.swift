import Logging
import NIOCore
import NIOHTTP1
import SluiceCore

/// One request's conversation with its upstream (SPEC §3 timeouts and breakers, §4.2, §7): a
/// thin shell over `UpstreamCallStateMachine`, bound to one event loop, that does what the
/// machine says with the upstream's targets (one picked per try by the balancer, a retry on one
/// not tried yet), the target's bulkhead (a slot taken per try, waiting at most
/// `queue_timeout`), the upstream's breaker (asked before every try, told every try's outcome),
/// the target's health (told every try's verdict), the retry budget, the target's connection
/// pool, and the delegate. On a connection, the deadlines are watched by
/// the connection's `LazyTimer`, which a busy connection schedules about once per timeout, not
/// once per request.
final class UpstreamCall: UpstreamConnectionUser {
    /// Request bodies up to this size (declared) are kept for retries when a retry is possible.
    static let replayableBodyLimit = 64 << 10

    let runtime: UpstreamRuntime
    private var request: UpstreamRequest
    private let eventLoop: any EventLoop
    private let logger: Logger
    private weak var delegate: (any UpstreamCallDelegate)?
    private var machine: UpstreamCallStateMachine
    private var connection: UpstreamConnection?
    /// The current try's target (its position in the runtime's targets).
    private var target: Int?
    /// Targets of earlier tries.
    private var tried = TargetSet()
    private var holdsSlot = false
    private var countedRequest = false
    private var waiter: UInt64?
    private var ticket: CircuitBreaker<ContinuousClock.Instant>.Ticket?
    private var tryStarted = ContinuousClock.now
    /// The deadline while a connection opens, and the backoff between tries.
    private var timer: Scheduled<Void>?

    init(runtime: UpstreamRuntime, request: UpstreamRequest, timeout: Duration, eventLoop: any EventLoop, logger: Logger, delegate: any UpstreamCallDelegate) {
        self.runtime = runtime
        self.request = request
        self.eventLoop = eventLoop
        self.logger = logger
        self.delegate = delegate
        machine = UpstreamCallStateMachine(
            deadline: .now() + TimeAmount(timeout), body: request.body.kind, retryable: request.retryable, retries: runtime.policy.retries,
            bodyTimeout: runtime.policy.bodyTimeout
        )
    }

    // MARK: - The partner's side

    func start() {
        perform(machine.start())
    }

    /// Sends (and flushes) a chunk of the streamed request body; `promise` completes when it is
    /// written, which is the sender's back-pressure. Chunks that come between tries wait for the
    /// next one; after the call ended they fail the promise.
    func sendBody(_ chunk: ByteBuffer, promise: EventLoopPromise<Void>?) {
        perform(machine.sendBody(chunk, promise: promise))
    }

    /// The streamed request body is complete.
    func endBody() {
        perform(machine.endBody())
    }

    /// Stops or resumes reading the response while the partner cannot take more of it.
    func pauseResponse(_ paused: Bool) {
        connection?.pauseReading(paused)
    }

    /// The partner went away: drops the upstream exchange and gives the slot back.
    func cancel() {
        perform(machine.cancel())
    }

    // MARK: - The connection's events

    func connection(_ connection: UpstreamConnection, received part: HTTPClientResponsePart) {
        switch part {
        case .head(let head):
            guard head.status.code >= 200 else { return }  // 100 Continue and other interim answers
            perform(machine.headArrived(head, retryContext()))
        case .body(let chunk):
            perform(machine.bodyArrived(chunk, now: .now()))
        case .end:
            perform(machine.responseEnded())
        }
    }

    func connectionClosed(_ connection: UpstreamConnection) {
        perform(machine.connectionClosed(wasPooled: connection.requestsServed > 1, anotherTarget: anotherTargetLeft()))
    }

    func connectionTimerFired(_ connection: UpstreamConnection) {
        perform(machine.timerFired(now: .now()))
    }

    // MARK: - Doing what the machine says

    private func perform(_ action: UpstreamCallStateMachine.Action) {
        switch action {
        case .none:
            break
        case .acquireSlot:
            acquireSlot()
        case .askBreaker:
            tryStarted = .now
            switch runtime.permission() {
            case .refused(let wait):
                perform(machine.breakerAnswered(refusedFor: wait, now: .now()))
            case .allowed(let allowed):
                ticket = allowed
                perform(machine.breakerAnswered(refusedFor: nil, now: .now()))
            }
        case .leaseConnection:
            leaseConnection()
        case .send(let send, let wakeAt):
            write(send, wakeAt: wakeAt)
        case .writeChunk(let chunk, let promise):
            connection?.write(.body(.byteBuffer(chunk)), promise: promise)
            connection?.flush()
        case .writeEnd:
            connection?.write(.end(nil), promise: nil)
            connection?.flush()
        case .refuseChunk(let promise):
            promise?.fail(ChannelError.ioOnClosedChannel)
        case .wake(let deadline):
            connection?.timer.wake(noLaterThan: deadline)
        case .respondStreaming(let head, let outcome, let targetFailed, let wakeAt):
            connection?.timer.wake(noLaterThan: wakeAt)
            recordTicket(outcome)
            if let target {
                runtime.tryAnswered(on: target, started: tryStarted)
                runtime.tryEnded(on: target, failed: targetFailed)
            }
            delegate?.upstreamCall(self, respondedWith: head, body: .streaming)
        case .deliver(let chunk):
            delegate?.upstreamCall(self, received: chunk)
        case .endTry(let end):
            endTry(end)
        }
    }

    /// Picks the try's target and takes a slot of its bulkhead.
    private func acquireSlot() {
        let partner = request.partner.isEmpty || runtime.policy.balancer != .partnerHash ? 0 : StableHash.of(request.partner)
        guard let index = runtime.pick(partner: partner, excluding: tried, on: eventLoop) else {
            runtime.noTarget()
            return perform(machine.slotDecided(granted: false))
        }
        target = index
        let bulkhead = runtime.targets[index].bulkhead
        if bulkhead.tryAcquire() { return slotGranted() }
        let call = NIOLoopBound(self, eventLoop: eventLoop)
        switch bulkhead.acquire(on: eventLoop, resume: { granted in call.value.slotDecided(granted) }) {
        case .acquired:
            slotGranted()
        case .refused:
            perform(machine.slotDecided(granted: false))
        case .queued(let waiter):
            self.waiter = waiter
            machine.slotQueued()
        }
    }

    private func slotDecided(_ granted: Bool) {
        waiter = nil
        guard case .waitingForSlot = machine.state, target != nil else {
            if granted, let target { runtime.targets[target].bulkhead.release() }  // the call ended meanwhile
            return
        }
        if granted { slotGranted() } else { perform(machine.slotDecided(granted: false)) }
    }

    private func slotGranted() {
        guard let target else { return }
        holdsSlot = true
        runtime.targets[target].inFlight.wrappingAdd(1, ordering: .relaxed)
        if !countedRequest {
            countedRequest = true
            runtime.recordRequest()
        }
        perform(machine.slotDecided(granted: true))
    }

    /// Gives the try's slot back.
    private func releaseSlot() {
        guard holdsSlot, let target else { return }
        holdsSlot = false
        runtime.targets[target].inFlight.wrappingSubtract(1, ordering: .relaxed)
        runtime.targets[target].bulkhead.release()
    }

    /// The target of the current (or last) try, as metrics and logs name it.
    var targetLabel: String? { target.map { runtime.targets[$0].label } }

    /// Sends on an idle connection of the target on this event loop, or on a new one once it is open.
    private func leaseConnection() {
        guard let target else { return }
        switch runtime.targets[target].client.connections.lease(on: eventLoop) {
        case .ready(let connection):
            use(connection)
        case .connecting(let future):
            let call = NIOLoopBound(self, eventLoop: eventLoop)
            timer = eventLoop.scheduleTask(deadline: machine.deadline) { call.value.perform(call.value.machine.connectTimedOut()) }
            future.whenComplete { result in
                let call = call.value
                call.timer?.cancel()
                call.timer = nil
                switch result {
                case .success(let connection):
                    guard case .connecting = call.machine.state else { return connection.close() }  // the call ended meanwhile
                    call.use(connection)
                case .failure(let error):
                    call.perform(call.machine.connectFailed(timedOut: Self.isConnectTimeout(error), anotherTarget: call.anotherTargetLeft(), call.retryContext()))
                }
            }
        }
    }

    /// Whether the upstream has a target this call has not tried (the current one counts as tried).
    private func anotherTargetLeft() -> Bool {
        var tried = tried
        if let target { tried.insert(target) }
        return runtime.hasAnotherTarget(than: tried)
    }

    private func use(_ connection: UpstreamConnection) {
        connection.user = self
        connection.requestsServed += 1
        self.connection = connection
        perform(machine.connected())
    }

    private func write(_ send: UpstreamCallStateMachine.Send, wakeAt deadline: NIODeadline) {
        guard let connection, let target else { return }
        connection.timer.wake(noLaterThan: deadline)
        // Changed only for a target other than the one the head was made for (no copy otherwise).
        let client = runtime.targets[target].client
        let path = client.path(for: request.target)
        if request.head.uri != path { request.head.uri = path }
        if request.head.headers.first(name: "Host") != client.authority { request.head.headers.replaceOrAdd(name: "Host", value: client.authority) }
        connection.write(.head(request.head), promise: nil)
        switch (send, request.body) {
        case (.whole, .whole(let body)):
            connection.write(.body(.byteBuffer(body)), promise: nil)
            connection.write(.end(nil), promise: nil)
        case (.streamed(let chunks, let end), _):
            for (chunk, promise) in chunks { connection.write(.body(.byteBuffer(chunk)), promise: promise) }
            if end { connection.write(.end(nil), promise: nil) }
        default:
            connection.write(.end(nil), promise: nil)
        }
        connection.flush()
        if case .streamed(_, end: false) = send { delegate?.upstreamCallWantsBody(self) }
    }

    /// A try ended: the breaker hears its outcome, the connection goes back or closes, and the
    /// call retries, goes on, or ends (then the slot is given back and waiting chunks fail).
    private func endTry(_ end: UpstreamCallStateMachine.TryEnd) {
        if let outcome = end.outcome { recordTicket(outcome) }
        if let target {
            if end.sampledLatency { runtime.tryAnswered(on: target, started: tryStarted) }
            runtime.tryEnded(on: target, failed: end.targetFailed)
        }
        if let connection {
            switch end.connection {
            case .keep:
                break
            case .giveBack:
                self.connection = nil
                connection.user = nil
                connection.pauseReading(false)
                runtime.targets[target!].client.connections.giveBack(connection)
            case .close:
                self.connection = nil
                connection.user = nil
                connection.close()
            }
        }
        switch end.next {
        case .goOn:
            return
        case .reconnect:
            connection?.user = nil
            connection = nil
            return leaseConnection()
        case .retry(let wait, let condition):
            releaseSlot()
            if let target { tried.insert(target) }
            logger.info(
                "retrying upstream call",
                metadata: [
                    "upstream": .string(runtime.name), "target": .string(targetLabel ?? ""), "retry": .stringConvertible(machine.retriesSoFar),
                    "condition": .string(condition.description),
                ]
            )
            let call = NIOLoopBound(self, eventLoop: eventLoop)
            timer = eventLoop.scheduleTask(in: wait) {
                call.value.timer = nil
                call.value.perform(call.value.machine.backoffElapsed())
            }
            return
        default:
            break
        }
        callEnded()
        switch end.next {
        case .fail(let failure): delegate?.upstreamCall(self, failed: failure)
        case .respondWhole(let head, let body): delegate?.upstreamCall(self, respondedWith: head, body: .whole(body))
        case .finishStream: delegate?.upstreamCallFinished(self)
        case .breakOff(let reason): delegate?.upstreamCall(self, brokeOff: reason)
        case .goOn, .reconnect, .retry, .cancelled: break
        }
    }

    private func recordTicket(_ outcome: UpstreamCallStateMachine.Outcome) {
        guard let ticket else { return }
        self.ticket = nil
        runtime.record(ticket, outcome, duration: ContinuousClock.now - tryStarted)
    }

    /// The call is over: timers stop, a waiting slot request is withdrawn, the slot is given
    /// back, and chunks that waited for a try fail.
    private func callEnded() {
        timer?.cancel()
        timer = nil
        if let waiter, let target {
            self.waiter = nil
            runtime.targets[target].bulkhead.cancel(waiter)
        }
        releaseSlot()
        for (_, promise) in machine.takePendingChunks() { promise?.fail(ChannelError.ioOnClosedChannel) }
    }

    private func retryContext() -> UpstreamCallStateMachine.RetryContext {
        UpstreamCallStateMachine.RetryContext(now: .now(), allowance: runtime)
    }

    private static func isConnectTimeout(_ error: any Error) -> Bool {
        if let channelError = error as? ChannelError, case .connectTimeout = channelError { return true }
        return false
    }
}
