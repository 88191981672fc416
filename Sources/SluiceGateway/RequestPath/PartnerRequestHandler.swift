import Foundation
import Logging
import NIOCore
import NIOHTTP1
import SluiceCore
import SluiceStore

/// The partner request path (SPEC §3, DESIGN "Request path") as a channel handler: one per
/// HTTP/1.1 connection (its requests one after the other: pipelined ones are queued here, and
/// reading pauses while any wait) or per HTTP/2 stream (behind NIO's HTTP/2-to-HTTP/1 codec).
/// A thin shell over `PartnerRequestStateMachine`: it turns what happens on the channel, in the
/// store and at the upstream into the machine's events and does what the machine answers.
/// Everything runs on the connection's event loop — no task, no lock, no thread hop:
///
/// 1. identity and 2. screening (`RequestScreening`), synchronous;
/// 3. admission (`AdmissionControl`), which on Redis also claims a keyed request's key;
/// 4. idempotency: a claim of its own when admission did not make it, a replay or 422 for a
///    finished key once the body's digest is known;
/// 5. dispatch (`UpstreamDispatch`, an `UpstreamCall` with this handler as its delegate), or
///    5b. a task (`TaskAcceptance`, `TaskControl.accept`), or a task poll (`TaskEndpoints`);
/// 6. the response (`ResponseShaping`), captured for a keyed request;
/// 7. the end: the machine's `Release` gives back the concurrency lease and the claim, the
///    record is written once (`RequestFinisher`), and the connection's watchdog hears the rest
///    of the request (`WatchdogTicket`) — whichever way the request ended.
///
/// Reading from the partner pauses only while something must wait: pipelined requests queued,
/// or a body that cannot go anywhere yet (admission pending, the call not ready for it, too much
/// of it unwritten upstream). A drain (`ChannelShouldQuiesceEvent`) closes an idle HTTP/1.1
/// connection at once and a busy one after its response, which then says `Connection: close`.
final class PartnerRequestHandler: ChannelDuplexHandler, RemovableChannelHandler, UpstreamCallDelegate {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Unwritten request body bytes towards the upstream above which partner reads pause.
    static let bodyHighWatermark = 256 << 10

    /// What arrived for a request after the one in progress (HTTP/1.1 pipelining).
    private enum Queued {
        case part(HTTPServerRequestPart)
        case error(HTTPParserError)
    }

    private let connection: PartnerConnection
    private let runtime: GatewayRuntime
    private let isHTTP2: Bool
    private let eventLoop: any EventLoop
    private var context: ChannelHandlerContext?
    private var request: PartnerRequest?
    private var queued: [Queued] = []
    private var takingQueued = false
    private var readsHeld = false
    private var readPending = false
    private var closed = false
    /// Asked to drain: no request after the current one.
    private var quiescing = false

    init(connection: PartnerConnection, runtime: GatewayRuntime, isHTTP2: Bool, eventLoop: any EventLoop) {
        self.connection = connection
        self.runtime = runtime
        self.isHTTP2 = isHTTP2
        self.eventLoop = eventLoop
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: - Channel events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        // Parts of the next request wait until this one is answered.
        if !queued.isEmpty || request?.endReceived == true {
            guard !quiescing else { return }
            queued.append(.part(part))
            updateReads()
            return
        }
        take(part)
    }

    private func take(_ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head):
            headArrived(head)
        case .body(let chunk):
            if let request { bodyArrived(chunk, request) }
        case .end:
            if let request { bodyEnded(request) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        queued.removeAll()
        if let request { perform(request.machine.clientWentAway(), request) }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent, !isHTTP2 else { return context.fireUserInboundEventTriggered(event) }
        quiescing = true
        queued.removeAll()
        if let request {
            request.machine.closeAfterThis()
        } else {
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parserError = error as? HTTPParserError else {
            context.close(promise: nil)
            return
        }
        if !queued.isEmpty || request?.endReceived == true {
            queued.append(.error(parserError))  // about the next request: answered in turn
            return
        }
        takeError(parserError)
    }

    private func takeError(_ parserError: HTTPParserError) {
        guard let request else { return answerProtocolError(parserError) }
        // The body's framing broke: nothing more of this connection can be trusted.
        if case .invalidEOFState = parserError { return perform(request.machine.clientWentAway(), request) }
        if request.machine.responseStarted { request.record.upstreamError = "request body is not valid HTTP" }
        perform(request.machine.bodyBroke(), request)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { request?.call?.pauseResponse(false) }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if readsHeld {
            readPending = true
        } else {
            context.read()
        }
    }

    /// Pauses or resumes reading from the partner (pipelined requests waiting, a body that
    /// cannot go anywhere yet), tells the watchdog, and sends `100 Continue` when the body is
    /// first wanted.
    private func updateReads() {
        var hold = !queued.isEmpty
        if let request, !request.machine.bodyEnded {
            let bodyHeld = request.machine.holdsBodyReads || request.unwrittenBodyBytes >= Self.bodyHighWatermark
            hold = hold || bodyHeld
            request.watchdog.hold(hold && request.machine.ending == nil, connection.watchdog)
            if !hold, request.machine.takeContinue(), let context {
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: request.head.version, status: .continue))), promise: nil)
            }
        }
        readsHeld = hold
        if !hold, readPending, let context {
            readPending = false
            context.read()
        }
    }

    // MARK: - Stages 1–3

    private func headArrived(_ nioHead: HTTPRequestHead) {
        let head = PartnerRequestHead(method: nioHead.method, target: nioHead.uri, headers: nioHead.headers, version: nioHead.version)
        let snapshot = runtime.snapshots.load()
        var record = RequestRecord(head, identifiers: runtime.identifiers, started: .now())
        let tracing = RequestTracing(head, record: &record, tracing: runtime.tracing, identifiers: runtime.identifiers)
        let screening = RequestScreening.screen(head, &record, snapshot, scheme: connection.scheme, keys: connection.keys) { [connection] in
            connection.certificateSubject
        }
        let length = RequestScreening.declaredBodyLength(head)
        let machine = PartnerRequestStateMachine(
            hasBody: (length ?? .none) != RequestBodyLength.none, drainable: RequestScreening.isDrainable(length),
            expectsContinue: head.headers.first(name: "expect")?.lowercased() == "100-continue", maxBody: snapshot.policy.gateway.limits.maxRequestBody,
            closeAfterResponse: quiescing || (!isHTTP2 && !nioHead.isKeepAlive)
        )
        let request = PartnerRequest(machine: machine, record: record, snapshot: snapshot, head: head, tracing: tracing)
        request.watchdog.open(connection.watchdog)
        self.request = request
        switch screening {
        case .reject(let problem, let headers):
            perform(request.machine.reject(problem, headers: headers), request)
        case .task(let endpoint):
            // Polls and cancels take a rate token and a concurrency slot like any request, but no
            // quota: a partner that used up its quota can still fetch the results it is owed.
            request.taskEndpoint = endpoint
            admit(request, partner: endpoint.partner, cost: 1, quota: false, claiming: nil)
        case .forward(let plan):
            request.plan = plan
            var claiming: IdempotencyClaimRequest?
            if let key = plan.idempotencyKey {
                let idempotent = IdempotentRequest(key: key, token: runtime.identifiers.token(), method: head.method.rawValue, target: head.target)
                request.idempotency = idempotent
                claiming = snapshot.idempotency.claimRequest(idempotent, routeTimeout: plan.requestTimeout)
            }
            admit(request, partner: plan.partner, cost: plan.route.policy.cost, quota: true, claiming: claiming)
        }
        updateReads()
    }

    private func admit(_ request: PartnerRequest, partner: Partner, cost: Int, quota: Bool, claiming: IdempotencyClaimRequest?) {
        switch request.snapshot.admission.admit(partner: partner, cost: cost, quota: quota, claiming: claiming, on: eventLoop) {
        case .decided(let admission):
            admitted(request, admission)
        case .pending(let pending):
            pending.whenDecided { [self] admission in admitted(request, admission) }
        }
    }

    private func admitted(_ request: PartnerRequest, _ admission: Admission) {
        request.admission = admission
        if request.machine.ending == nil { request.record.adopt(admission) }
        let outcome: PartnerRequestStateMachine.AdmissionOutcome
        switch admission.verdict {
        case .admitted: outcome = .admitted(lease: admission.lease != nil, claim: admission.claim.map { claimAnswer($0, request) })
        case .refused(let reason): outcome = .refused(ResponseShaping.problem(refusedFor: reason, admission))
        case .storeUnavailable: outcome = .storeUnavailable
        }
        perform(request.machine.admitted(outcome, keyed: request.idempotency != nil, taskEndpoint: request.taskEndpoint != nil), request)
    }

    // MARK: - Stage 4: idempotency

    /// A claim's result as the machine needs it; a won claim is held (and renewed) from here on.
    private func claimAnswer(_ result: Result<IdempotencyClaim, any Error>, _ request: PartnerRequest) -> PartnerRequestStateMachine.ClaimAnswer {
        guard let idempotent = request.idempotency, let plan = request.plan else { return .failed }
        let live = request.machine.ending == nil
        switch result {
        case .failure:
            return .failed
        case .success(.claimed):
            request.snapshot.idempotency.claimWon(idempotent, partner: plan.partner.id, routeTimeout: plan.requestTimeout, on: eventLoop)
            if live { settle(request, .new) }
            return .claimed
        case .success(.inProgress(let milliseconds)):
            if live { settle(request, .inUse) }
            return .inProgress(retryAfterMilliseconds: milliseconds)
        case .success(.completed(let record)):
            let sameTarget = record.fingerprint.target == idempotent.target
            if live, !sameTarget { settle(request, .mismatch) }
            return .completed(record, sameTarget: sameTarget)
        }
    }

    private func claim(_ request: PartnerRequest) {
        guard let idempotent = request.idempotency, let plan = request.plan else { return }
        request.snapshot.idempotency.claim(idempotent, partner: plan.partner.id, routeTimeout: plan.requestTimeout, on: eventLoop) {
            [self] result in
            perform(request.machine.claimAnswered(claimAnswer(result, request)), request)
        }
    }

    /// Counts a keyed request's outcome and notes it for the access log.
    private func settle(_ request: PartnerRequest, _ result: IdempotencyResult) {
        request.snapshot.idempotency.metrics.idempotency(result)
        request.record.idempotency = result
    }

    // MARK: - Doing what the machine says

    private func perform(_ action: PartnerRequestStateMachine.Action, _ request: PartnerRequest) {
        switch action {
        case .none:
            break
        case .claim:
            claim(request)
        case .dispatch:
            dispatch(request)
        case .lookUpTask:
            guard let endpoint = request.taskEndpoint else { return }
            TaskEndpoints.answer(endpoint, snapshot: request.snapshot, logger: runtime.logger, on: eventLoop) { [self] answer in
                perform(request.machine.taskLookedUp(answer), request)
            }
        case .startCall(let body):
            request.settleHeldChunks()  // a body kept whole may have arrived while the request waited
            startCall(request, body)
        case .sendHeldBody(let end):
            let held = request.held
            request.held.removeAll()
            for chunk in held { sendUpstream(chunk, request) }
            if end { request.call?.endBody() }
        case .endCallBody:
            request.call?.endBody()
        case .storeTask:
            request.settleHeldChunks()
            storeTask(request)
        case .compare(let record):
            let matches = request.idempotency?.matches(record) == true
            settle(request, matches ? .replayed : .mismatch)
            perform(request.machine.compared(record, matches: matches), request)
        case .answer(let answer):
            request.call?.cancel()
            request.call = nil
            write(answer, request)
        case .release(let release):
            give(release, request)
            if release.ending == .answered { endResponse(request) }
        case .cancelCall(let release):
            request.call?.cancel()
            request.call = nil
            give(release, request)
            retire(request)
        case .releaseAndClose(let release):
            request.call?.cancel()
            request.call = nil
            give(release, request)
            retire(request)
            context?.close(promise: nil)
        }
        request.settleHeldChunks()
        if self.request === request { updateReads() }
    }

    /// Gives back what the request held and, when it ended now, writes its record (spans,
    /// metrics, usage, access log) — once: the machine's `Release` says what.
    private func give(_ release: PartnerRequestStateMachine.Release, _ request: PartnerRequest) {
        if release.lease, let admission = request.admission { request.snapshot.admission.finish(admission) }
        if release.claim != .none, let idempotent = request.idempotency, let partner = request.plan?.partner.id,
            let result = request.snapshot.idempotency.conclude(
                idempotent, partner: partner, completed: release.claim == .record, requestID: request.record.requestID, on: eventLoop
            )
        {
            if release.ending != nil { request.record.idempotency = result }
        }
        guard let ending = release.ending else { return }
        request.record.clientGone = ending == .clientGone
        request.tracing.finish(request.record, status: request.record.reportedStatus)
        RequestFinisher.finished(request.record, runtime: runtime, on: eventLoop)
    }

    /// The request leaves the handler: the watchdog hears the rest of it.
    private func retire(_ request: PartnerRequest) {
        request.cache?.end(on: eventLoop)
        request.watchdog.close(connection.watchdog)
        if self.request === request { self.request = nil }
    }

    // MARK: - Stage 5: dispatch

    private func dispatch(_ request: PartnerRequest) {
        guard let plan = request.plan else { return }
        if plan.async != nil {
            request.collected = context?.channel.allocator.buffer(capacity: 0)
            return perform(request.machine.dispatch(.task), request)
        }
        if request.cache == nil, let cache = plan.route.policy.cache, request.head.method == .GET || request.head.method == .HEAD {
            return lookUpCache(request, plan, cache)
        }
        guard let upstream = request.snapshot.upstreams[plan.upstream.name] else {
            runtime.logger.error("no client for upstream", metadata: ["request_id": .string(request.record.requestID)])
            return perform(request.machine.reject(Problem(.internalError, detail: "The gateway could not handle this request."), headers: []), request)
        }
        var (head, retryable, dispatch) = UpstreamDispatch.prepare(request, plan, upstream: upstream, connection: connection, runtime: runtime)
        if let exchange = request.cache, exchange.mode != .bypass {
            // The cache asks the upstream for the whole answer (revalidating its own entry); the
            // partner's conditional request is answered from the entry, not forwarded.
            for name in ["if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"] { head.headers.remove(name: name) }
            for (name, value) in exchange.validators { head.headers.add(name: name, value: value) }
        }
        request.upstream = (upstream, head, retryable)
        if case .known(let length) = plan.bodyLength, dispatch == .collected { request.collected = context?.channel.allocator.buffer(capacity: length) }
        perform(request.machine.dispatch(dispatch), request)
    }

    // MARK: - Stage 4b: the response cache

    /// Answers from the cache, or goes on to the upstream (`dispatch` again, with the exchange
    /// set) when the entry is missing, stale or the request asked to revalidate.
    private func lookUpCache(_ request: PartnerRequest, _ plan: ForwardPlan, _ cache: RouteCache) {
        let caching = request.snapshot.caching
        let exchange = caching.exchange(request.head, plan: plan, cache: cache)
        request.cache = exchange
        guard exchange.mode != .bypass else { return dispatch(request) }
        caching.lookUp(exchange, on: eventLoop) { [self] decision in
            switch decision {
            case .answer(let answer, let refresh):
                if refresh { refreshInBackground(request, plan, exchange) }
                request.record.cache = exchange.result.rawValue
                perform(request.machine.cacheAnswered(answer), request)
            case .forward:
                dispatch(request)
            }
        }
    }

    /// Stale-while-revalidate: the entry is refreshed by a call of its own, like a task's.
    private func refreshInBackground(_ request: PartnerRequest, _ plan: ForwardPlan, _ exchange: CacheExchange) {
        guard let upstream = request.snapshot.upstreams[plan.upstream.name] else { return request.snapshot.caching.fills.finish(exchange.key, with: nil) }
        var headers: [TaskHeader] = []
        let forwarding = UpstreamDispatch.forwardingContext(
            request, plan, connection: connection, traceparent: RequestIdentity.traceparent(request.record.trace, spanID: runtime.identifiers.next64())
        )
        HeaderRewriter.forwardRequest(request.head.headers, forwarding) { name, value in
            guard !name.lowercased().hasPrefix("if-") else { return }
            headers.append(TaskHeader(name, value))
        }
        let refresh = TaskRequest(
            method: "GET", upstream: upstream.name, pathAndQuery: plan.target, headers: headers, body: Data(), timeoutMilliseconds: plan.requestTimeout.milliseconds
        )
        request.snapshot.caching.refresh(exchange, request: refresh, partner: plan.partner.id, upstream: upstream, on: eventLoop)
    }

    private func startCall(_ request: PartnerRequest, _ body: PartnerRequestStateMachine.CallBody) {
        guard let (upstream, head, retryable) = request.upstream, let plan = request.plan else { return }
        request.upstream = nil  // the call holds the only copy of the head: a try on another target changes it in place
        let callBody: UpstreamRequest.Body =
            switch body {
            case .none: .none
            case .whole: .whole(request.collected ?? ByteBuffer())
            case .streamed: .streamed
            }
        request.collected = nil
        let call = UpstreamCall(
            runtime: upstream, request: UpstreamRequest(head: head, target: plan.target, partner: plan.partner.id, body: callBody, retryable: retryable),
            timeout: plan.requestTimeout,
            eventLoop: eventLoop, logger: runtime.logger, delegate: self
        )
        request.call = call
        request.record.upstreamStarted = .now()
        call.start()
    }

    private func sendUpstream(_ chunk: ByteBuffer, _ request: PartnerRequest) {
        guard let call = request.call else { return }
        let bytes = chunk.readableBytes
        request.unwrittenBodyBytes += bytes
        let promise = eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenComplete { [self] _ in
            request.unwrittenBodyBytes -= bytes
            if self.request === request, request.unwrittenBodyBytes < Self.bodyHighWatermark / 2, readsHeld { updateReads() }
        }
        call.sendBody(chunk, promise: promise)
        if request.unwrittenBodyBytes >= Self.bodyHighWatermark, !readsHeld { updateReads() }
    }

    // MARK: - Stage 5b: tasks

    /// Stores the request as a task. The partner's answer comes with `answered`; the key (if
    /// any) follows the task whatever became of the request, with `settled`.
    private func storeTask(_ request: PartnerRequest) {
        guard let plan = request.plan else { return }
        let (record, taskRequest, dedupe) = TaskAcceptance.make(request, plan, connection: connection, runtime: runtime)
        var accepted = TaskAcceptance.accepted(record, plan)
        request.snapshot.tasks.accept(
            record, request: taskRequest, dedupe: dedupe, on: eventLoop,
            answered: { [self] answer in
                switch answer {
                case .accepted: request.record.taskAccepted = true
                case .duplicate(let earlier): accepted = TaskAcceptance.accepted(earlier, plan)
                case .unavailable: break
                }
                perform(request.machine.taskAnswered(answer == .unavailable ? TaskAcceptance.unavailable : accepted), request)
            },
            settled: { [self] settlement in
                guard let idempotent = request.idempotency, let partner = request.plan?.partner.id else { return }
                switch request.machine.taskSettled(settlement) {
                case .none:
                    break
                case .recordAcceptance:
                    guard case .document(let status, let body, let extra) = accepted else { return }
                    let headers = ResponseShaping.document(bodyBytes: body.count, extra: extra, request.record, date: runtime.dates.current)
                    request.snapshot.idempotency.recordAnswer(
                        idempotent, status: status, headers: headers, body: ByteBuffer(bytes: body), partner: partner, requestID: request.record.requestID,
                        on: eventLoop
                    )
                case .releaseClaim:
                    _ = request.snapshot.idempotency.conclude(idempotent, partner: partner, completed: false, requestID: request.record.requestID, on: eventLoop)
                }
            }
        )
    }

    // MARK: - The request body

    private func bodyArrived(_ chunk: ByteBuffer, _ request: PartnerRequest) {
        request.record.bytesIn += chunk.readableBytes
        request.idempotency?.bodyArrived(chunk)
        switch request.machine.bodyReceived(chunk.readableBytes) {
        case .hold: request.held.append(chunk)
        case .collect: request.collected?.writeImmutableBuffer(chunk)
        case .forward: sendUpstream(chunk, request)
        case .drop: break
        case .tooLarge: perform(request.machine.bodyTooLarge(), request)
        }
    }

    private func bodyEnded(_ request: PartnerRequest) {
        request.endReceived = true
        request.watchdog.bodyEnded(connection.watchdog)
        request.idempotency?.bodyEnded()
        perform(request.machine.bodyEnd(), request)
        if request.machine.isComplete { requestCompleted(request) }  // the rest of an answered request's body was drained
    }

    // MARK: - UpstreamCallDelegate

    func upstreamCallWantsBody(_ call: UpstreamCall) {
        guard let request, request.call === call else { return }
        perform(request.machine.callWantsBody(), request)
    }

    func upstreamCall(_ call: UpstreamCall, respondedWith upstreamHead: HTTPResponseHead, body: UpstreamResponseBody) {
        guard let request, request.call === call, let context else { return }
        var cacheStatus: String?
        if let exchange = request.cache {
            let (instead, status) = exchange.upstreamResponded(status: Int(upstreamHead.status.code), headers: upstreamHead.headers)
            request.record.cache = exchange.result.rawValue
            if let instead {
                // A 304 revalidated the entry, or a 5xx meets a stale entry that may answer on error.
                request.call = nil
                call.cancel()
                request.record.target = call.targetLabel
                request.tracing.upstreamEnded(status: Int(upstreamHead.status.code))
                return perform(request.machine.cacheAnswered(instead), request)
            }
            cacheStatus = status
        }
        guard request.machine.upstreamResponded() else { return }
        var headers = ResponseShaping.forwarded(upstreamHead.headers, request.record, date: runtime.dates.current)
        if let cacheStatus { headers.add(name: "Cache-Status", value: cacheStatus) }
        if request.machine.closeAfterResponse && !isHTTP2 { headers.replaceOrAdd(name: "Connection", value: "close") }
        let head = HTTPResponseHead(version: responseVersion(request), status: upstreamHead.status, headers: headers)
        request.record.status = Int(upstreamHead.status.code)
        request.record.target = call.targetLabel
        if let started = request.record.upstreamStarted { request.record.upstreamDuration = .nanoseconds((NIODeadline.now() - started).nanoseconds) }
        request.tracing.upstreamEnded(status: request.record.status)
        request.idempotency?.responseStarted(status: request.record.status, headers: headers)
        switch body {
        case .whole(let buffer):
            // Head and a small body go out in one write.
            request.record.bytesOut = buffer?.readableBytes ?? 0
            if let buffer { request.idempotency?.responseBodyArrived(buffer) }
            if let exchange = request.cache {
                if let buffer { exchange.bodyArrived(buffer) }
                exchange.responseEnded()
            }
            request.call = nil
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            if let buffer { context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil) }
            perform(request.machine.answerWritten(), request)
        case .streaming:
            context.writeAndFlush(wrapOutboundOut(.head(head)), promise: nil)
        }
    }

    func upstreamCall(_ call: UpstreamCall, received chunk: ByteBuffer) {
        guard let request, request.call === call, let context else { return }
        request.record.bytesOut += chunk.readableBytes
        request.idempotency?.responseBodyArrived(chunk)
        request.cache?.bodyArrived(chunk)
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(chunk))), promise: nil)
        if !context.channel.isWritable { call.pauseResponse(true) }
    }

    func upstreamCallFinished(_ call: UpstreamCall) {
        guard let request, request.call === call else { return }
        request.call = nil
        request.cache?.responseEnded()
        perform(request.machine.answerWritten(), request)
    }

    func upstreamCall(_ call: UpstreamCall, failed failure: UpstreamFailure) {
        guard let request, request.call === call else { return }
        request.call = nil
        request.record.target = call.targetLabel
        request.record.upstreamError = "\(failure)"
        request.tracing.upstreamEnded(status: nil, failure: "\(failure)")
        if let exchange = request.cache, let stale = exchange.answerOnFailure() {
            request.record.cache = exchange.result.rawValue
            return perform(request.machine.cacheAnswered(stale), request)
        }
        perform(request.machine.upstreamFailed(failure), request)
    }

    func upstreamCall(_ call: UpstreamCall, brokeOff reason: UpstreamBreak) {
        guard let request, request.call === call else { return }
        request.call = nil
        switch reason {
        case .stalled:
            runtime.logger.warning(
                "upstream stalled mid-body; response cut off",
                metadata: [
                    "upstream": .string(call.runtime.name), "request_id": .string(request.record.requestID),
                    "bytes_sent": "\(request.record.bytesOut)",
                ]
            )
            request.record.upstreamError = "body stalled for longer than \(call.runtime.policy.bodyTimeout)"
        case .closed:
            request.record.upstreamError = "upstream closed the connection mid-body"
        }
        perform(request.machine.upstreamBrokeOff(), request)
    }

    // MARK: - Stage 6: answers

    /// Writes an answer from the gateway itself (head and body, none for HEAD); its end follows
    /// when the machine has released the request (`endResponse`).
    private func write(_ answer: PartnerRequestStateMachine.Answer, _ request: PartnerRequest) {
        guard let context else { return }
        let status: Int
        var headers: HTTPHeaders
        let body: ByteBuffer?
        switch answer {
        case .problem(let problem, let extra):
            status = problem.status
            request.record.problem = problem.type.rawValue
            let shaped = ResponseShaping.problem(problem, request.record, extra: extra, date: runtime.dates.current, allocator: context.channel.allocator)
            (headers, body) = (shaped.0, shaped.1)
        case .replay(let record) where !record.bodyKept:
            let (problem, extra) = ResponseShaping.notReplayable(record)
            return write(.problem(problem, headers: extra), request)
        case .replay(let record):
            status = record.status
            headers = ResponseShaping.replay(record, request.record, date: runtime.dates.current)
            body = record.body.isEmpty ? nil : context.channel.allocator.buffer(bytes: record.body)
        case .document(let documentStatus, let bytes, let extra):
            status = documentStatus
            headers = ResponseShaping.document(bodyBytes: bytes.count, extra: extra, request.record, date: runtime.dates.current)
            body = context.channel.allocator.buffer(bytes: bytes)
        case .cached(let answer):
            request.record.answeredFromCache = true
            status = answer.notModified ? 304 : answer.response.status
            headers = ResponseShaping.cached(answer, request.record, date: runtime.dates.current)
            body = answer.notModified || answer.response.body.isEmpty ? nil : context.channel.allocator.buffer(bytes: answer.response.body)
        }
        request.record.status = status
        request.record.bytesOut = body?.readableBytes ?? 0
        if request.machine.closeAfterResponse && !isHTTP2 { headers.replaceOrAdd(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: responseVersion(request), status: .init(statusCode: status), headers: headers))), promise: nil)
        if let body, request.head.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        perform(request.machine.answerWritten(), request)
    }

    /// Writes the end of the answer and flushes; then takes the next request, drains the rest
    /// of this one's body, or closes (HTTP/2: resets the stream when its body did not end).
    private func endResponse(_ request: PartnerRequest) {
        guard let context else { return }
        request.watchdog.responseEnded(connection.watchdog)
        if request.machine.closeAfterResponse && (!isHTTP2 || !request.machine.bodyEnded) {
            retire(request)
            queued.removeAll()
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            return
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        if request.machine.bodyEnded { requestCompleted(request) }  // else: drain the rest of the body first
    }

    /// Request and response are both complete: the next request, if one is queued, goes next.
    private func requestCompleted(_ request: PartnerRequest) {
        guard self.request === request else { return }
        retire(request)
        guard !takingQueued else { return }  // the loop below is already running further up the stack
        takingQueued = true
        defer { takingQueued = false }
        while self.request == nil || self.request?.endReceived == false, !queued.isEmpty {
            switch queued.removeFirst() {
            case .part(let part): take(part)
            case .error(let error): takeError(error)
            }
        }
        updateReads()
    }

    /// The status line of an HTTP/1.1 response echoes the request's minor version.
    private func responseVersion(_ request: PartnerRequest) -> HTTPVersion {
        isHTTP2 ? request.head.version : (request.head.version == .http1_0 ? .http1_0 : .http1_1)
    }

    /// A malformed new request: 400 (431 for oversized headers) and close.
    private func answerProtocolError(_ error: HTTPParserError) {
        guard let context else { return }
        if case .invalidEOFState = error { return context.close(promise: nil) }
        guard !closed else { return }
        closed = true
        let problem: Problem
        if case .headerOverflow = error {
            problem = Problem(
                .invalidRequest, detail: "The request line and headers are larger than the gateway accepts.", status: 431,
                title: "Request header fields too large"
            )
        } else {
            problem = Problem(.invalidRequest, detail: "The request is not valid HTTP/1.1.")
        }
        let requestID = runtime.identifiers.requestID()
        let body = context.channel.allocator.buffer(string: problem.json(instance: nil, requestID: requestID))
        let headers: HTTPHeaders = [
            "Content-Type": Problem.contentType, "Content-Length": String(body.readableBytes), "Connection": "close", "X-Request-Id": requestID,
            "Date": runtime.dates.current,
        ]
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: problem.status), headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        RequestFinisher.protocolError(status: problem.status, requestID: requestID, runtime: runtime, on: context.eventLoop)
    }
}
