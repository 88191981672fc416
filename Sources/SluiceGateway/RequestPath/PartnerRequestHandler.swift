import Foundation
import Logging
import NIOCore
import NIOHTTP1
import SluiceCore
import SluiceStore

/// The partner request path (SPEC §3, DESIGN "Request path") as a channel handler: one per
/// HTTP/1.1 connection (its requests one after the other: pipelined ones are queued here, and
/// reading pauses while any wait) or per HTTP/2 stream (behind NIO's HTTP/2-to-HTTP/1 codec).
/// Everything runs on the connection's event loop — no task, no lock, no thread hop:
///
/// 1. identity (request id) and 2. screening — size and target checks, authentication, version,
///    route (`RequestScreening`), synchronous;
/// 3. admission — `AdmissionControl`: the embedded store decides inline, Redis answers with a
///    completion on this loop (its own Redis connection);
/// 4. idempotency — a keyed POST/PATCH claims its key: on Redis in the admission call itself
///    (one store step before dispatch, as for any request), else alone (`IdempotencyControl`);
///    a key in use answers 409, a finished one is replayed or answers 422 once the body's digest
///    is known (the body is hashed as it streams, never kept); (5b. async task acceptance plugs
///    in here too);
/// 5. dispatch — an `UpstreamCall` with this handler as its delegate; bodies stream both ways
///    with back-pressure (partner reads pause while the upstream connection has too much
///    unwritten, upstream reads pause while this channel is not writable);
/// 6. response — `ResponseShaping` adds the request's headers; small answers go out in one write;
/// 7. finish — concurrency slot released, the idempotency claim recorded or released, metrics and
///    access log (`RequestFinisher`), exactly once.
///
/// Reading from the partner pauses only while something must wait: pipelined requests queued,
/// or a request body that cannot go anywhere yet (admission pending, the upstream call not
/// ready for it, too much of it unwritten upstream). A drain (`ChannelShouldQuiesceEvent`)
/// closes an idle HTTP/1.1 connection at once and a busy one after its response, which then
/// says `Connection: close`.
final class PartnerRequestHandler: ChannelDuplexHandler, RemovableChannelHandler, UpstreamCallDelegate {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Unwritten request body bytes towards the upstream above which partner reads pause.
    static let bodyHighWatermark = 256 << 10

    private enum BodyHandling {
        /// No body, or one that is not forwarded (an HTTP/2 GET's DATA frames).
        case none
        /// Kept while admission is pending (reads are held, so this stays small).
        case holding
        /// Read whole (declared ≤ 64 KiB, retries possible), then sent with the call.
        case collecting
        /// Sent to the upstream as it arrives.
        case streaming
        /// Read and dropped: the gateway answered before the body ended.
        case discarding
        /// Read and dropped: its digest decides between a replay and a 422 when it ends.
        case hashing
        /// Read whole (up to `max_request_body`), then stored with the task it becomes.
        case accepting
    }

    /// One request from head to finish.
    private final class Request {
        var record: RequestRecord
        let snapshot: GatewaySnapshot
        let head: PartnerRequestHead
        var plan: ForwardPlan?
        /// Set for a status read or cancel of a task.
        var taskEndpoint: TaskEndpointRequest?
        var admission: Admission?
        /// Set for a request with an `Idempotency-Key` on a POST or PATCH route.
        var idempotency: IdempotentRequest?
        /// What stage 5 sends: the upstream, the rewritten head, whether it may be sent twice.
        var upstream: (runtime: UpstreamRuntime, head: HTTPRequestHead, retryable: Bool)?
        var call: UpstreamCall?
        var body = BodyHandling.none
        var requestEnded = false
        /// Body chunks that arrived before the upstream call wanted them.
        var pending: [ByteBuffer] = []
        var collected: ByteBuffer?
        /// The upstream call asked for the streamed body.
        var bodyWanted = false
        var unwrittenBodyBytes = 0
        var responseStarted = false
        var responseEnded = false
        /// Close the HTTP/1.1 connection (or reset the HTTP/2 stream) once the response is out.
        var closeAfterResponse = false
        var finished = false
        /// Its spans, when traces are exported.
        var tracing: RequestTracing

        init(record: RequestRecord, snapshot: GatewaySnapshot, head: PartnerRequestHead, tracing: RequestTracing) {
            self.record = record
            self.tracing = tracing
            self.snapshot = snapshot
            self.head = head
        }
    }

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
    private var request: Request?
    private var queued: [Queued] = []
    private var takingQueued = false
    private var readsHeld = false
    /// The watchdog was told that a request body's reads are held (so it is not idle).
    private var bodyHeldForWatchdog = false
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

    // MARK: - Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        // Parts of the next request wait until this one is answered.
        if !queued.isEmpty || request?.requestEnded == true {
            guard !quiescing else { return }
            queued.append(.part(part))
            updateReads()
            return
        }
        take(part, context: context)
    }

    private func take(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            requestHeadArrived(head, context: context)
        case .body(let chunk):
            guard let request else { return }
            bodyArrived(chunk, request)
        case .end:
            guard let request else { return }
            requestEndArrived(request)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        queued.removeAll()
        if let request { clientWentAway(request) }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent, !isHTTP2 else { return context.fireUserInboundEventTriggered(event) }
        quiescing = true
        queued.removeAll()
        if let request {
            request.closeAfterResponse = true
        } else {
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parserError = error as? HTTPParserError else {
            context.close(promise: nil)
            return
        }
        if !queued.isEmpty || request?.requestEnded == true {
            queued.append(.error(parserError))  // about the next request: answered in turn
            return
        }
        takeError(parserError, context: context)
    }

    private func takeError(_ parserError: HTTPParserError, context: ChannelHandlerContext) {
        guard let request else { return answerProtocolError(parserError, context: context) }
        // The body's framing broke: nothing more of this connection can be trusted.
        if case .invalidEOFState = parserError { return clientWentAway(request) }
        request.call?.cancel()
        request.call = nil
        request.closeAfterResponse = true
        if request.responseStarted {
            request.record.upstreamError = "request body is not valid HTTP"
            finish(request)
            context.close(promise: nil)
        } else {
            answer(request, Problem(.invalidRequest, detail: "The request body is not valid HTTP."))
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { request?.call?.pauseResponse(false) }
        context.fireChannelWritabilityChanged()
    }

    // MARK: - Outbound

    func read(context: ChannelHandlerContext) {
        if readsHeld {
            readPending = true
        } else {
            context.read()
        }
    }

    /// Pauses or resumes reading from the partner: paused while pipelined requests wait, or
    /// while the request's body cannot be passed on yet.
    private func updateReads() {
        let hold: Bool
        if !queued.isEmpty {
            hold = true
        } else if let request, !request.requestEnded {
            switch request.body {
            case .holding: hold = true
            case .streaming: hold = !request.bodyWanted || request.unwrittenBodyBytes >= Self.bodyHighWatermark
            case .none, .collecting, .discarding, .hashing, .accepting: hold = false
            }
        } else {
            hold = false
        }
        readsHeld = hold
        let bodyHeld = hold && request.map { !$0.requestEnded && !$0.finished } == true
        if bodyHeld != bodyHeldForWatchdog { tellWatchdog(bodyHeld: bodyHeld) }
        if !hold, readPending, let context {
            readPending = false
            context.read()
        }
    }

    /// A body the gateway holds is back-pressure, not an idle partner (`ConnectionTimeouts`).
    private func tellWatchdog(bodyHeld: Bool) {
        bodyHeldForWatchdog = bodyHeld
        if bodyHeld { connection.watchdog.bodyReadsHeld() } else { connection.watchdog.bodyReadsResumed() }
    }

    // MARK: - Stages 1–3

    private func requestHeadArrived(_ nioHead: HTTPRequestHead, context: ChannelHandlerContext) {
        connection.watchdog.requestHeadReceived()
        let head = PartnerRequestHead(method: nioHead.method, target: nioHead.uri, headers: nioHead.headers, version: nioHead.version)
        let snapshot = runtime.snapshots.load()
        var record = RequestRecord(head, identifiers: runtime.identifiers, started: .now())
        let tracing = RequestTracing(head, record: &record, tracing: runtime.tracing, identifiers: runtime.identifiers)
        let screening = RequestScreening.screen(head, &record, snapshot, scheme: connection.scheme, keys: connection.keys) { [connection] in
            connection.certificateSubject
        }
        let request = Request(record: record, snapshot: snapshot, head: head, tracing: tracing)
        request.closeAfterResponse = quiescing || (!isHTTP2 && !nioHead.isKeepAlive)
        self.request = request
        switch screening {
        case .reject(let problem, let headers):
            answer(request, problem, headers)
        case .task(let endpoint):
            // Polls and cancels take a rate token and a concurrency slot like any request, but no
            // quota: a partner that used up its quota can still fetch the results it is owed.
            request.taskEndpoint = endpoint
            switch snapshot.admission.admit(partner: endpoint.partner, cost: 1, quota: false, claiming: nil, on: eventLoop) {
            case .decided(let admission):
                admitted(request, admission)
            case .pending(let pending):
                pending.whenDecided { [self] admission in admitted(request, admission) }
            }
        case .forward(let plan):
            request.plan = plan
            var claiming: IdempotencyClaimRequest?
            if let key = plan.idempotencyKey {
                let idempotent = IdempotentRequest(key: key, token: runtime.identifiers.token(), method: head.method.rawValue, target: head.target)
                request.idempotency = idempotent
                claiming = snapshot.idempotency.claimRequest(idempotent, routeTimeout: plan.route.requestTimeout)
            }
            if plan.bodyLength != .none {
                request.body = .holding
                updateReads()
            }
            let admission = snapshot.admission.admit(
                partner: plan.partner, cost: plan.route.policy.cost, claiming: claiming, on: eventLoop
            )
            switch admission {
            case .decided(let admission):
                admitted(request, admission)
            case .pending(let pending):
                pending.whenDecided { [self] admission in admitted(request, admission) }
            }
        }
    }

    private func admitted(_ request: Request, _ admission: Admission) {
        if case .success(.claimed)? = admission.claim, let idempotent = request.idempotency, let plan = request.plan {
            request.snapshot.idempotency.claimWon(idempotent, partner: plan.partner.id, routeTimeout: plan.route.requestTimeout, on: eventLoop)
        }
        guard self.request === request, !request.finished else {
            // The client left while admission was pending: its slot and a won claim are given back.
            request.snapshot.admission.finish(admission)
            concludeIdempotency(request)
            return
        }
        request.admission = admission
        request.record.adopt(admission)
        switch admission.verdict {
        case .admitted where request.taskEndpoint != nil:
            answerTaskEndpoint(request, request.taskEndpoint!)
        case .admitted where request.idempotency != nil:
            if let claim = admission.claim { claimAnswered(request, claim) } else { claim(request) }
        case .admitted:
            dispatch(request)
        case .refused(let reason):
            answer(request, ResponseShaping.problem(refusedFor: reason, admission))
        case .storeUnavailable:
            answer(
                request, Problem(.upstreamUnavailable, detail: "The gateway cannot check rate limits right now; try again shortly."),
                [("Retry-After", "1")]
            )
        }
    }

    // MARK: - Stage 4: idempotency

    private func claim(_ request: Request) {
        guard let idempotent = request.idempotency, let plan = request.plan else { return }
        request.snapshot.idempotency.claim(idempotent, partner: plan.partner.id, routeTimeout: plan.route.requestTimeout, on: eventLoop) {
            [self] result in
            claimAnswered(request, result)
        }
    }

    private func claimAnswered(_ request: Request, _ result: Result<IdempotencyClaim, any Error>) {
        guard let idempotent = request.idempotency else { return }
        if case .success(.claimed) = result, let plan = request.plan {
            request.snapshot.idempotency.claimWon(idempotent, partner: plan.partner.id, routeTimeout: plan.route.requestTimeout, on: eventLoop)
        }
        guard self.request === request, !request.finished else {
            // The client left while the store answered: a won claim is given back.
            concludeIdempotency(request)
            return
        }
        switch result {
        case .failure:
            answer(
                request, Problem(.upstreamUnavailable, detail: "The gateway cannot check idempotency keys right now; try again shortly."),
                [("Retry-After", "1")]
            )
        case .success(.claimed):
            settle(request, .new)
            dispatch(request)
        case .success(.inProgress(let milliseconds)):
            settle(request, .inUse)
            answer(
                request, Problem(.idempotencyKeyInUse, detail: "A request with this Idempotency-Key is still in progress; retry later."),
                [("Retry-After", String(IdempotencyControl.retryAfter(milliseconds: milliseconds)))]
            )
        case .success(.completed(let record)):
            guard record.fingerprint.target == idempotent.target else { return mismatch(request) }
            idempotent.phase = .comparing(record)
            if request.requestEnded { return compare(request) }
            // The body decides: read and hash it (without keeping it), then answer.
            continueIfExpected(request)
            request.pending.removeAll()
            request.body = .hashing
            updateReads()
        }
    }

    /// The body of a retry for a finished key is in: replay when it is the same request, else 422.
    private func compare(_ request: Request) {
        guard let idempotent = request.idempotency, case .comparing(let record) = idempotent.phase else { return }
        idempotent.phase = .concluded
        guard idempotent.matches(record) else { return mismatch(request) }
        settle(request, .replayed)
        guard record.bodyKept else {
            let (problem, headers) = ResponseShaping.notReplayable(record)
            return answer(request, problem, headers)
        }
        guard let context, !request.responseStarted else { return }
        let headers = ResponseShaping.replay(record, request.record, date: runtime.dates.current)
        request.record.status = record.status
        request.record.bytesOut = record.body.count
        let body = record.body.isEmpty ? nil : context.channel.allocator.buffer(bytes: record.body)
        respond(request, HTTPResponseHead(version: responseVersion(request), status: .init(statusCode: record.status), headers: headers), body: body, context: context)
    }

    private func mismatch(_ request: Request) {
        request.idempotency?.phase = .concluded
        settle(request, .mismatch)
        answer(
            request,
            Problem(.idempotencyKeyReused, detail: "This Idempotency-Key was used for a different request (method, path, query or body).")
        )
    }

    /// Counts a keyed request's outcome and notes it for the access log.
    private func settle(_ request: Request, _ result: IdempotencyResult) {
        request.snapshot.idempotency.metrics.idempotency(result)
        request.record.idempotency = result
    }

    /// Records a claimed request's response, or releases its claim (stage 7).
    private func concludeIdempotency(_ request: Request) {
        guard let idempotent = request.idempotency, let partner = request.plan?.partner.id else { return }
        let completed = request.responseEnded && !request.record.clientGone
        if let result = request.snapshot.idempotency.conclude(
            idempotent, partner: partner, completed: completed, requestID: request.record.requestID, on: eventLoop
        ) {
            request.record.idempotency = result
        }
    }

    // MARK: - Stage 5: dispatch

    /// What the upstream learns about the request besides its own headers (forwarding headers, trace).
    private func forwardingContext(_ request: Request, _ plan: ForwardPlan, traceparent: String) -> ForwardingContext {
        ForwardingContext(
            clientAddress: connection.clientAddress,
            scheme: connection.scheme,
            host: request.head.headers.first(name: "host"),
            partnerID: plan.partner.id,
            version: plan.version.version.name,
            requestID: request.record.requestID,
            traceparent: traceparent,
            fromTrustedProxy: connection.isTrustedProxy(request.snapshot.policy.gateway.listen.trustedProxies)
        )
    }

    private func dispatch(_ request: Request) {
        if request.plan?.async != nil { return acceptAsTask(request) }
        guard let plan = request.plan, let upstream = request.snapshot.upstreams[plan.route.upstream.name] else {
            runtime.logger.error("no client for upstream", metadata: ["request_id": .string(request.record.requestID)])
            return answer(request, Problem(.internalError, detail: "The gateway could not handle this request."))
        }
        let head = request.head
        var upstreamHead = HTTPRequestHead(version: .http1_1, method: head.method, uri: upstream.client.path(for: plan.target))
        upstreamHead.headers.reserveCapacity(head.headers.count + 8)
        upstreamHead.headers.add(name: "Host", value: upstream.client.authority)
        let traceparent = request.tracing.startUpstream(
            upstream.name, record: request.record, tracing: runtime.tracing, identifiers: runtime.identifiers
        )
        HeaderRewriter.forwardRequest(head.headers, forwardingContext(request, plan, traceparent: traceparent)) { upstreamHead.headers.add(name: $0, value: $1) }
        let retryable = upstream.policy.retries.attempts > 0
            && RetryRules.mayRetry(method: head.method.rawValue, hasIdempotencyKey: head.headers.contains(name: "idempotency-key"))

        switch plan.bodyLength {
        case .none:
            if head.method == .POST || head.method == .PUT || head.method == .PATCH {
                upstreamHead.headers.add(name: "Content-Length", value: "0")
            }
        case .known(let length):
            upstreamHead.headers.add(name: "Content-Length", value: String(length))
        case .unknown:
            upstreamHead.headers.add(name: "Transfer-Encoding", value: "chunked")
        }
        request.upstream = (upstream, upstreamHead, retryable)

        switch plan.bodyLength {
        case .none:
            request.body = .none
            startCall(request, .none)
        case .known(let length) where retryable && length <= UpstreamCall.replayableBodyLimit:
            // Small enough to keep, so that a retry can send it again.
            continueIfExpected(request)
            request.body = .collecting
            var collected = self.context!.channel.allocator.buffer(capacity: length)
            for chunk in request.pending { collected.writeImmutableBuffer(chunk) }
            request.pending.removeAll()
            request.collected = collected
            if request.requestEnded { startCall(request, .whole(collected)) } else { updateReads() }
        case .known, .unknown:
            // Streamed: reads resume when the call wants the body.
            continueIfExpected(request)
            request.body = .streaming
            startCall(request, .streamed)
        }
    }

    private func startCall(_ request: Request, _ body: UpstreamRequest.Body) {
        guard let (upstream, head, retryable) = request.upstream, let plan = request.plan, let context else { return }
        let call = UpstreamCall(
            runtime: upstream, request: UpstreamRequest(head: head, body: body, retryable: retryable), timeout: plan.route.requestTimeout,
            eventLoop: eventLoop, logger: runtime.logger, delegate: self
        )
        request.call = call
        request.record.upstreamStarted = .now()
        call.start()
    }

    /// Answers `Expect: 100-continue` before the body is read.
    private func continueIfExpected(_ request: Request) {
        guard let context, request.head.headers.first(name: "expect")?.lowercased() == "100-continue" else { return }
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: request.head.version, status: .continue))), promise: nil)
    }

    // MARK: - Stage 5b: async tasks

    /// Reads the whole body (bounded by `max_request_body`), then stores the task.
    private func acceptAsTask(_ request: Request) {
        guard let context else { return }
        continueIfExpected(request)
        request.body = .accepting
        var collected = context.channel.allocator.buffer(capacity: 0)
        for chunk in request.pending { collected.writeImmutableBuffer(chunk) }
        request.pending.removeAll()
        request.collected = collected
        if request.requestEnded || request.plan?.bodyLength == RequestBodyLength.none { storeTask(request) } else { updateReads() }
    }

    /// Stores the request as a task (its forwarded headers, with `Idempotency-Key: <task id>` for
    /// the upstream) and answers 202 with where to poll.
    private func storeTask(_ request: Request) {
        guard let plan = request.plan, let async = plan.async, request.body == .accepting else { return }
        request.body = .none
        let tasks = request.snapshot.tasks
        let id = TaskID.random()
        // The task's runs join the accepting request's trace (as children of its span when tracing).
        let traceparent = request.tracing.serverTraceparent(runtime.tracing)
            ?? RequestIdentity.traceparent(request.record.trace, spanID: runtime.identifiers.next64())
        let forwarding = forwardingContext(request, plan, traceparent: traceparent)
        var headers: [TaskHeader] = []
        HeaderRewriter.forwardRequest(request.head.headers, forwarding) { name, value in
            guard name.lowercased() != "idempotency-key" else { return }
            headers.append(TaskHeader(name, value))
        }
        headers.append(TaskHeader("Idempotency-Key", id.text))
        let body = request.collected.map { Data($0.readableBytesView) } ?? Data()
        request.collected = nil
        let taskRequest = TaskRequest(
            method: request.head.method.rawValue, upstream: plan.route.upstream.name, pathAndQuery: plan.target, headers: headers, body: body,
            timeoutMilliseconds: plan.route.requestTimeout.milliseconds
        )
        let record = TaskRecord(
            id: id, partner: plan.partner.id, version: plan.version.version.name, route: plan.route.id,
            lifecycle: TaskLifecycle(acceptedAt: tasks.clock(), instance: tasks.instance, requestID: request.record.requestID),
            traceparent: forwarding.traceparent
        )
        tasks.accept(record, request: taskRequest, on: eventLoop, answered: { [self] outcome in
            guard self.request === request, !request.finished else { return }
            switch outcome {
            case .accepted:
                request.record.taskAccepted = true
                var extra = [
                    ("Location", TaskDocument.statusPath(record)), ("Retry-After", String(TaskControl.pollHint(routeTimeout: plan.route.requestTimeout))),
                ]
                if async == .requested { extra.append(("Preference-Applied", "respond-async")) }
                respondDocument(request, status: .accepted, TaskDocument.accepted(record), extra)
            case .unavailable:
                runtime.logger.warning("could not store a task", metadata: ["request_id": .string(request.record.requestID)])
                answer(
                    request, Problem(.upstreamUnavailable, detail: "The gateway cannot accept tasks right now; try again shortly."),
                    [("Retry-After", "1")]
                )
            }
        }, settled: { _ in })
    }

    /// `GET` (status) and `DELETE` (cancel) of `/{version}/tasks/{id}`: the owner's task, else 404.
    private func answerTaskEndpoint(_ request: Request, _ endpoint: TaskEndpointRequest) {
        let tasks = request.snapshot.tasks
        let notFound = Problem(.notFound, detail: "There is no task '\(endpoint.id.text)'.")
        let unavailable = Problem(.upstreamUnavailable, detail: "The gateway cannot read tasks right now; try again shortly.")
        switch endpoint.action {
        case .status:
            tasks.status(endpoint.id, partner: endpoint.partner.id, on: eventLoop) { [self] result in
                guard self.request === request, !request.finished else { return }
                switch result {
                case .success(.found(let record)):
                    let hint = record.lifecycle.status.isFinished ? [] : [("Retry-After", String(TaskControl.pollHint(for: record, request.snapshot)))]
                    respondDocument(request, status: .ok, TaskDocument.status(record), hint)
                case .success(.notFound):
                    answer(request, notFound)
                case .failure:
                    answer(request, unavailable, [("Retry-After", "1")])
                }
            }
        case .cancel:
            let notify = endpoint.partner.policy.webhook != nil
            tasks.cancel(endpoint.id, partner: endpoint.partner.id, notify: notify, on: eventLoop) { [self] result in
                guard self.request === request, !request.finished else { return }
                switch result {
                case .success(.cancelled(let record)):
                    runtime.logger.info("task cancelled", metadata: TaskWorkers.metadata(record))
                    respondDocument(request, status: .ok, TaskDocument.status(record), [])
                case .success(.conflict(let record)):
                    answer(
                        request,
                        Problem(.taskNotCancellable, detail: "Only a queued task can be cancelled; this one is \(record.lifecycle.status.rawValue).")
                    )
                case .success(.notFound):
                    answer(request, notFound)
                case .failure:
                    answer(request, unavailable, [("Retry-After", "1")])
                }
            }
        }
    }

    // MARK: - The request body

    private func bodyArrived(_ chunk: ByteBuffer, _ request: Request) {
        request.record.bytesIn += chunk.readableBytes
        let limit = request.snapshot.policy.gateway.limits.maxRequestBody
        if request.record.bytesIn > limit, request.body != .discarding {
            return bodyTooLarge(request, limit: limit)
        }
        request.idempotency?.bodyArrived(chunk)
        switch request.body {
        case .none, .discarding, .hashing:
            break
        case .holding:
            request.pending.append(chunk)
        case .collecting, .accepting:
            request.collected?.writeImmutableBuffer(chunk)
        case .streaming:
            if request.bodyWanted { sendUpstream(chunk, request) } else { request.pending.append(chunk) }
        }
    }

    private func requestEndArrived(_ request: Request) {
        request.requestEnded = true
        if bodyHeldForWatchdog { tellWatchdog(bodyHeld: false) }
        connection.watchdog.requestBodyEnded()
        request.idempotency?.bodyEnded()
        switch request.body {
        case .none, .holding:
            break
        case .collecting:
            startCall(request, .whole(request.collected ?? ByteBuffer()))
        case .streaming:
            if request.bodyWanted { request.call?.endBody() }
        case .discarding:
            if request.responseEnded { requestCompleted(request) }
        case .hashing:
            compare(request)
        case .accepting:
            storeTask(request)
        }
    }

    private func sendUpstream(_ chunk: ByteBuffer, _ request: Request) {
        guard let call = request.call, let context else { return }
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

    private func bodyTooLarge(_ request: Request, limit: Int) {
        request.call?.cancel()
        request.call = nil
        request.closeAfterResponse = true
        request.body = .discarding
        if request.responseStarted {
            finish(request)
            context?.close(promise: nil)
        } else {
            answer(request, Problem(.payloadTooLarge, detail: "The request body is larger than \(limit) bytes."))
        }
    }

    // MARK: - UpstreamCallDelegate

    func upstreamCallWantsBody(_ call: UpstreamCall) {
        guard let request, request.call === call else { return }
        request.bodyWanted = true
        let pending = request.pending
        request.pending.removeAll()
        for chunk in pending { sendUpstream(chunk, request) }
        if request.requestEnded {
            call.endBody()
        } else {
            updateReads()
        }
    }

    func upstreamCall(_ call: UpstreamCall, respondedWith upstreamHead: HTTPResponseHead, body: UpstreamResponseBody) {
        guard let request, request.call === call, let context else { return }
        var headers = ResponseShaping.forwarded(upstreamHead.headers, request.record, date: runtime.dates.current)
        if !request.requestEnded { request.closeAfterResponse = true }  // answered before the upload ended
        if request.closeAfterResponse && !isHTTP2 { headers.replaceOrAdd(name: "Connection", value: "close") }
        let head = HTTPResponseHead(version: responseVersion(request), status: upstreamHead.status, headers: headers)
        request.record.status = Int(upstreamHead.status.code)
        if let started = request.record.upstreamStarted { request.record.upstreamDuration = .nanoseconds((NIODeadline.now() - started).nanoseconds) }
        request.tracing.upstreamEnded(status: request.record.status)
        request.responseStarted = true
        request.idempotency?.responseStarted(status: request.record.status, headers: headers)
        switch body {
        case .whole(let buffer):
            // Head and a small body go out in one write.
            request.record.bytesOut = buffer?.readableBytes ?? 0
            if let buffer { request.idempotency?.responseBodyArrived(buffer) }
            request.call = nil
            respond(request, head, body: buffer, context: context)
        case .streaming:
            context.writeAndFlush(wrapOutboundOut(.head(head)), promise: nil)
        }
    }

    func upstreamCall(_ call: UpstreamCall, received chunk: ByteBuffer) {
        guard let request, request.call === call, let context else { return }
        request.record.bytesOut += chunk.readableBytes
        request.idempotency?.responseBodyArrived(chunk)
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(chunk))), promise: nil)
        if !context.channel.isWritable { call.pauseResponse(true) }
    }

    func upstreamCallFinished(_ call: UpstreamCall) {
        guard let request, request.call === call, let context else { return }
        request.call = nil
        endResponse(request, context: context)
    }

    func upstreamCall(_ call: UpstreamCall, failed failure: UpstreamFailure) {
        guard let request, request.call === call else { return }
        request.call = nil
        let (problem, headers) = ResponseShaping.problem(for: failure)
        request.record.upstreamError = "\(failure)"
        request.tracing.upstreamEnded(status: nil, failure: "\(failure)")
        answer(request, problem, headers)
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
        // Cut off: the partner must not take the response for complete.
        finish(request)
        self.request = nil
        context?.close(promise: nil)
    }

    // MARK: - Answering

    /// Answers from the gateway itself (a problem document): stages 3–5 end here.
    private func answer(_ request: Request, _ problem: Problem, _ extra: [(String, String)] = []) {
        guard let context, !request.responseStarted else { return }
        request.record.status = problem.status
        request.record.problem = problem.type.rawValue
        stopReadingBody(request)
        let (headers, body) = ResponseShaping.problem(problem, request.record, extra: extra, date: runtime.dates.current, allocator: context.channel.allocator)
        request.record.bytesOut = body.readableBytes
        respond(request, HTTPResponseHead(version: responseVersion(request), status: .init(statusCode: problem.status), headers: headers), body: body, context: context)
    }

    /// A JSON document from the gateway itself (task answers), kept for a replay when the request has an `Idempotency-Key`.
    private func respondDocument(_ request: Request, status: HTTPResponseStatus, _ document: Data, _ extra: [(String, String)]) {
        guard let context, !request.responseStarted else { return }
        stopReadingBody(request)
        let body = context.channel.allocator.buffer(bytes: document)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "Date", value: runtime.dates.current)
        for (name, value) in extra { headers.add(name: name, value: value) }
        request.record.addResponseHeaders(to: &headers)
        request.record.status = Int(status.code)
        request.record.bytesOut = body.readableBytes
        request.idempotency?.responseStarted(status: request.record.status, headers: headers)
        request.idempotency?.responseBodyArrived(body)
        respond(request, HTTPResponseHead(version: responseVersion(request), status: status, headers: headers), body: body, context: context)
    }

    /// The gateway answers before the request body ended: a small body is drained, a large or
    /// unbounded one costs less as a new connection.
    private func stopReadingBody(_ request: Request) {
        if !request.requestEnded {
            // Drain a small body; a large or unbounded one costs less as a new connection.
            let drainable: Bool = if case .known(let length) = RequestScreening.declaredBodyLength(request.head) {
                length <= RequestScreening.drainableBodyLimit
            } else {
                RequestScreening.declaredBodyLength(request.head) == RequestBodyLength.none
            }
            if !drainable { request.closeAfterResponse = true }
            request.pending.removeAll()
            request.body = .discarding
            updateReads()
        }
    }

    /// Writes a whole response at once — head, body (none for HEAD), end: the gateway's own
    /// answers, small forwarded ones and replays; says `Connection: close` when the HTTP/1.1
    /// connection ends after it.
    private func respond(_ request: Request, _ head: HTTPResponseHead, body: ByteBuffer?, context: ChannelHandlerContext) {
        var head = head
        if request.closeAfterResponse && !isHTTP2 { head.headers.replaceOrAdd(name: "Connection", value: "close") }
        request.responseStarted = true
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if let body, request.head.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        endResponse(request, context: context)
    }

    /// Writes the end of the response and flushes; then finishes the request, and either takes
    /// the next one, drains the rest of this one's body, or closes.
    private func endResponse(_ request: Request, context: ChannelHandlerContext) {
        request.responseEnded = true
        finish(request)
        connection.watchdog.responseEnded()
        let closing = request.closeAfterResponse && (!isHTTP2 || !request.requestEnded)
        if closing {
            self.request = nil
            queued.removeAll()
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            return
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        if request.requestEnded { requestCompleted(request) }  // else: drain the rest of the body first
    }

    /// Request and response are both complete: the next request, if one is queued, goes next.
    private func requestCompleted(_ request: Request) {
        guard self.request === request, let context else { return }
        self.request = nil
        guard !takingQueued else { return }  // the loop below is already running further up the stack
        takingQueued = true
        defer { takingQueued = false }
        while self.request == nil || self.request?.requestEnded == false, !queued.isEmpty {
            let next = queued.removeFirst()
            switch next {
            case .part(let part): take(part, context: context)
            case .error(let error): takeError(error, context: context)
            }
        }
        updateReads()
    }

    /// The status line of an HTTP/1.1 response echoes the request's minor version.
    private func responseVersion(_ request: Request) -> HTTPVersion {
        isHTTP2 ? request.head.version : (request.head.version == .http1_0 ? .http1_0 : .http1_1)
    }

    /// A malformed new request: 400 (431 for oversized headers) and close.
    private func answerProtocolError(_ error: HTTPParserError, context: ChannelHandlerContext) {
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

    // MARK: - Stage 7: finish

    /// The partner went away (closed the connection, reset the stream, or its body broke off):
    /// the upstream call is cancelled, the slot released, the request logged (499 if unanswered).
    private func clientWentAway(_ request: Request) {
        request.call?.cancel()
        request.call = nil
        request.record.clientGone = !request.responseEnded
        finish(request)
        if self.request === request { self.request = nil }
    }

    /// Releases the concurrency slot and records the request (metrics, access log) — once.
    private func finish(_ request: Request) {
        guard !request.finished else { return }
        request.finished = true
        if bodyHeldForWatchdog { tellWatchdog(bodyHeld: false) }
        if let admission = request.admission { request.snapshot.admission.finish(admission) }
        concludeIdempotency(request)
        request.tracing.finish(request.record, status: request.record.reportedStatus)
        RequestFinisher.finished(request.record, runtime: runtime, on: eventLoop)
    }
}
