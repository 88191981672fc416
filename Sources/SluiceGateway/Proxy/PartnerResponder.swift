import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import SluiceCore
import X509

/// Answers partner requests (SPEC §3): request identity, size and target checks,
/// authentication, version, route, then forwarding to the upstream with both bodies streamed.
/// Each request reads one policy snapshot, so a reload never half-applies.
struct PartnerResponder: Sendable {
    let runtime: GatewayRuntime
    /// `https` or `http`: the listener this responder serves.
    let scheme: String

    /// What the gateway decided before contacting an upstream.
    private enum Decision {
        case reject(Problem, headers: HTTPFields)
        case forward(ForwardPlan)
    }

    private struct ForwardPlan {
        var partner: Partner
        var version: VersionRules
        var route: Route
        /// Upstream path and query, e.g. `/api/orders/17?expand=lines`.
        var target: String
        var bodyLength: BodyLength
    }

    private enum BodyLength {
        case none
        case known(Int)
        case unknown
    }

    /// - Parameter disconnect: The HTTP/1.1 connection's disconnect signal; nil for an HTTP/2 stream.
    func respond(_ request: Request, _ writer: consuming ResponseWriter, _ channel: any Channel, _ disconnect: DisconnectSignal?) async throws {
        let started = ContinuousClock.now
        let snapshot = runtime.snapshots.load()
        var exchange = Exchange(request: request, identifiers: runtime.identifiers)
        do {
            switch await decide(request, &exchange, snapshot, channel) {
            case .reject(let problem, let headers):
                try await writeProblem(problem, headers, &exchange, request, writer)
            case .forward(let plan):
                let eventLoop = channel.eventLoop
                let requestID = exchange.requestID
                let admission = (try? await eventLoop.flatSubmit {
                    snapshot.admission.admit(partner: plan.partner, route: plan.route, requestID: requestID, on: eventLoop)
                }.get()) ?? .admittedWithoutLimits
                defer { snapshot.admission.finish(admission) }
                exchange.adopt(admission)
                switch admission.verdict {
                case .admitted:
                    try await forward(plan, request, &exchange, snapshot, writer, channel, disconnect)
                case .refused(let reason):
                    try await writeProblem(ResponseShaping.problem(refusedFor: reason, admission), closeHeadersIfBodyIsLarge(request), &exchange, request, writer)
                case .storeUnavailable:
                    let problem = Problem(.upstreamUnavailable, detail: "The gateway cannot check rate limits right now; try again shortly.")
                    try await writeProblem(problem, closeHeadersIfBodyIsLarge(request).adding(.retryAfter, "1"), &exchange, request, writer)
                }
            }
        } catch {
            exchange.clientGone = true
            finish(exchange, started: started)
            throw error
        }
        finish(exchange, started: started)
    }

    // MARK: - Deciding

    private func decide(_ request: Request, _ exchange: inout Exchange, _ snapshot: GatewaySnapshot, _ channel: any Channel) async -> Decision {
        let limits = snapshot.policy.gateway.limits
        let closeIfBodyUnread = closeHeadersIfBodyIsLarge(request)

        if Self.headerBytes(request) > limits.maxHeaderBytes {
            return .reject(
                Problem(.invalidRequest, detail: "The request line and headers are larger than \(limits.maxHeaderBytes) bytes.", status: 431, title: "Request header fields too large"),
                headers: closeIfBodyUnread
            )
        }
        guard let path = exchange.path.first == "/" ? exchange.path : nil, !RequestScreening.hasDotSegment(path) else {
            return .reject(Problem(.invalidRequest, detail: "The request target must be an absolute path without '.' or '..' segments."), headers: closeIfBodyUnread)
        }

        guard let partner = await authenticate(request, snapshot, channel) else {
            return .reject(
                Problem(.unauthorized, detail: "Send a valid API key as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'."),
                headers: closeIfBodyUnread.adding(.wwwAuthenticate, "Bearer")
            )
        }
        exchange.partner = partner.id

        let versionRules: VersionRules
        let routePath: Substring
        switch snapshot.rules.resolveVersion(path: Substring(path), apiVersionHeader: request.headers[.apiVersion], partner: partner) {
        case .unknown(let name):
            return .reject(Problem(.unknownVersion, detail: "API version '\(name)' does not exist."), headers: closeIfBodyUnread)
        case .forbidden(let rules):
            exchange.adopt(version: rules)
            return .reject(Problem(.forbiddenVersion, detail: "Your account may not use API version '\(rules.version.name)'."), headers: closeIfBodyUnread)
        case .resolved(let rules, let rest):
            exchange.adopt(version: rules)
            versionRules = rules
            routePath = rest
        }

        let route: Route
        let parameters: RouteParameters
        switch versionRules.routes.match(method: request.method.rawValue, path: routePath) {
        case .notFound:
            return .reject(Problem(.notFound, detail: "No route for \(routePath) in API version \(versionRules.version.name)."), headers: closeIfBodyUnread)
        case .methodNotAllowed(let allow):
            return .reject(
                Problem(.methodNotAllowed, detail: "\(request.method.rawValue) is not allowed here."),
                headers: closeIfBodyUnread.adding(.allow, allow)
            )
        case .found(let matched, let captured):
            route = matched
            parameters = captured
        }
        exchange.route = route.id
        exchange.upstream = route.upstream.name

        let bodyLength: BodyLength
        switch Self.declaredBodyLength(request) {
        case .success(let length): bodyLength = length
        case .failure:
            return .reject(Problem(.invalidRequest, detail: "Content-Length is not valid."), headers: [.connection: "close"])
        }
        if case .known(let length) = bodyLength, length > limits.maxRequestBody {
            return .reject(
                Problem(.payloadTooLarge, detail: "The request body is larger than \(limits.maxRequestBody) bytes."),
                headers: [.connection: "close"]
            )
        }

        // Admission (rate limits, quotas, concurrency) runs next, in respond(); idempotency and
        // async tasks come after it.
        let target = route.upstreamPath.render(parameters) + exchange.query
        return .forward(ForwardPlan(partner: partner, version: versionRules, route: route, target: target, bodyLength: bodyLength))
    }

    /// The partner of the API key, or of the client certificate when no key was sent.
    private func authenticate(_ request: Request, _ snapshot: GatewaySnapshot, _ channel: any Channel) async -> Partner? {
        if let key = Credentials.presented(authorization: request.headers[.authorization], apiKey: request.headers[.xAPIKey]) {
            return snapshot.rules.partner(forKey: key)
        }
        guard scheme == "https", snapshot.policy.gateway.tls?.clientCAPath != nil,
            let subject = await Self.peerCertificateSubject(channel)
        else { return nil }
        return snapshot.rules.partner(forCertificateSubject: subject)
    }

    /// The verified client certificate's subject (RFC 4514), looked up on the TLS connection
    /// (the channel itself for HTTP/1.1, its parent for an HTTP/2 stream).
    private static func peerCertificateSubject(_ channel: any Channel) async -> String? {
        for candidate in [channel, channel.parent].compactMap({ $0 }) {
            let lookup = candidate.eventLoop.submit { () -> (hasTLS: Bool, certificate: NIOSSLCertificate?) in
                guard let handler = try? candidate.pipeline.syncOperations.handler(type: NIOSSLHandler.self) else { return (false, nil) }
                return (true, handler.peerCertificate)
            }
            guard let result = try? await lookup.get(), result.hasTLS else { continue }
            guard let certificate = result.certificate, let parsed = try? Certificate(derEncoded: certificate.toDERBytes()) else {
                return nil
            }
            return parsed.subject.description
        }
        return nil
    }

    // MARK: - Forwarding

    private func forward(
        _ plan: ForwardPlan, _ request: Request, _ exchange: inout Exchange, _ snapshot: GatewaySnapshot,
        _ writer: consuming ResponseWriter, _ channel: any Channel, _ disconnect: DisconnectSignal?
    ) async throws {
        guard let upstream = snapshot.upstreams[plan.route.upstream.name] else {
            runtime.logger.error("no client for upstream", metadata: ["upstream": "\(plan.route.upstream.name)"])
            return try await writeProblem(Problem(.internalError, detail: "The gateway could not handle this request."), [:], &exchange, request, writer)
        }
        var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: request.method.rawValue), uri: upstream.client.path(for: plan.target))
        head.headers.reserveCapacity(request.headers.count + 8)
        head.headers.add(name: "Host", value: upstream.client.authority)
        let context = ForwardingContext(
            clientAddress: channel.remoteAddress?.ipAddress,
            scheme: scheme,
            host: request.head.authority,
            partnerID: plan.partner.id,
            version: plan.version.version.name,
            requestID: exchange.requestID,
            traceparent: RequestIdentity.traceparent(
                incoming: request.headers[.traceparent], requestID: exchange.requestID, generator: runtime.identifiers
            )
        )
        HeaderRewriter.forwardRequest(request.headers.lazy.map { (name: $0.name.rawName, value: $0.value) }, context) {
            head.headers.add(name: $0, value: $1)
        }

        let retryable = upstream.policy.retries.attempts > 0
            && RetryRules.mayRetry(method: request.method.rawValue, hasIdempotencyKey: request.headers[.idempotencyKey] != nil)
        var body: RequestBodyStream?
        /// Set when the body is streamed: a try that sent part of it cannot be retried.
        var streamed: RequestBodyStream?
        var upstreamBody = UpstreamRequest.Body.none
        switch plan.bodyLength {
        case .none:
            if request.method == .post || request.method == .put || request.method == .patch {
                head.headers.add(name: "Content-Length", value: "0")
            }
        case .known(let length):
            head.headers.add(name: "Content-Length", value: String(length))
            let stream = RequestBodyStream(request.body, limit: snapshot.policy.gateway.limits.maxRequestBody)
            body = stream
            if retryable && length <= UpstreamCall.replayableBodyLimit {
                // Small enough to keep, so that a retry can send it again.
                try await continueIfExpected(request, writer)
                guard let whole = try? await stream.collect(upTo: length) else {
                    exchange.bytesIn = stream.bytesRead
                    guard let (problem, headers) = Self.problem(for: .requestBody(stream.failure ?? .truncated)) else {
                        exchange.clientGone = true
                        return
                    }
                    return try await writeProblem(problem, headers.adding(.connection, "close"), &exchange, request, writer)
                }
                upstreamBody = .whole(whole)
            } else {
                upstreamBody = .streamed
                streamed = stream
                try await continueIfExpected(request, writer)
            }
        case .unknown:
            head.headers.add(name: "Transfer-Encoding", value: "chunked")
            let stream = RequestBodyStream(request.body, limit: snapshot.policy.gateway.limits.maxRequestBody)
            upstreamBody = .streamed
            body = stream
            streamed = stream
            try await continueIfExpected(request, writer)
        }

        let call = UpstreamExchange(
            runtime: upstream, timeout: plan.route.requestTimeout, disconnect: disconnect, channel: channel, logger: runtime.logger
        )
        defer { call.finish() }
        let outcome = await call.perform(UpstreamRequest(head: head, body: upstreamBody, retryable: retryable), streamedBody: streamed)
        /// Closes the request body and records how much of it was read.
        func settleRequestBody() async {
            await body?.close()
            exchange.bytesIn = body?.bytesRead ?? 0
        }

        let answer: UpstreamAnswer
        switch outcome {
        case .failure(let failure):
            await settleRequestBody()
            guard let (problem, headers) = Self.problem(for: failure) else {
                exchange.clientGone = true
                return
            }
            exchange.upstreamError = "\(failure)"
            let close: HTTPFields = body?.isComplete == false ? [.connection: "close"] : [:]
            return try await writeProblem(problem, headers + close, &exchange, request, writer)
        case .success(let answered):
            answer = answered
        }

        var response = HTTPResponse(status: HTTPResponse.Status(code: Int(answer.status.code), reasonPhrase: answer.status.reasonPhrase))
        response.headerFields = responseHeaders(answer.headers, exchange)
        if let body, !body.isComplete { response.headerFields[.connection] = "close" }
        exchange.status = response.status.code

        do {
            switch answer.body {
            case .whole(let buffer):
                // Head and a small body go out in one write: one hop to the event loop, one syscall.
                exchange.bytesOut = buffer?.readableBytes ?? 0
                try await writer.write(response: response, body: buffer.map { ResponseBody(byteBuffer: $0) } ?? ResponseBody())
            case .streaming(let chunks):
                var bodyWriter = try await writer.writeHead(response)
                for try await chunk in chunks {
                    exchange.bytesOut += chunk.readableBytes
                    try await bodyWriter.write(chunk)
                }
                try await bodyWriter.finish(nil)
            }
        } catch {
            await settleRequestBody()
            if error is UpstreamStalled {
                runtime.logger.warning(
                    "upstream stalled mid-body; response cut off",
                    metadata: ["upstream": .string(upstream.name), "request_id": .string(exchange.requestID), "bytes_sent": "\(exchange.bytesOut)"]
                )
                exchange.upstreamError = "body stalled for longer than \(upstream.policy.bodyTimeout)"
            } else {
                exchange.upstreamError = String(describing: error)
            }
            throw error
        }
        await settleRequestBody()
    }

    /// Answers `Expect: 100-continue` before the body is read.
    private func continueIfExpected(_ request: Request, _ writer: borrowing ResponseWriter) async throws {
        if request.headers[.expect]?.lowercased() == "100-continue" {
            try await writer.writeInformationalHead(HTTPResponse(status: .continue))
        }
    }

    /// The upstream's headers without hop-by-hop ones, plus the gateway's (request id, version
    /// headers, and `Date` when the upstream sent none, as RFC 9110 §6.6.1 asks of proxies).
    private func responseHeaders(_ upstream: HTTPHeaders, _ exchange: Exchange) -> HTTPFields {
        var fields = HTTPFields()
        fields.reserveCapacity(upstream.count + exchange.responseHeaders.count + 1)
        let nominated = HeaderRewriter.connectionNominated(values: upstream["connection"])
        var hasDate = false
        for (name, value) in upstream {
            guard let fieldName = HTTPField.Name(name),
                HeaderRewriter.keepsResponseHeader(name, nominated: nominated)
            else { continue }
            if fieldName == .date { hasDate = true }
            fields.append(HTTPField(name: fieldName, value: value))
        }
        if !hasDate { fields.append(HTTPField(name: .date, value: runtime.dates.current)) }
        fields.append(contentsOf: exchange.responseHeaders)
        return fields
    }

    /// The problem (and extra headers) for a failed upstream exchange; nil when the partner went
    /// away or stopped sending its body (nobody to answer).
    static func problem(for failure: UpstreamFailure) -> (Problem, HTTPFields)? {
        ResponseShaping.problem(for: failure).map { problem, extra in
            (problem, HTTPFields(extra.map { HTTPField(name: HTTPField.Name($0.0)!, value: $0.1) }))
        }
    }

    // MARK: - Answering

    private func writeProblem(
        _ problem: Problem, _ extra: HTTPFields, _ exchange: inout Exchange, _ request: Request, _ writer: consuming ResponseWriter
    ) async throws {
        let json = problem.json(instance: String(exchange.path), requestID: exchange.requestID)
        var fields = exchange.responseHeaders
        fields.append(contentsOf: extra)
        fields[.contentType] = Problem.contentType
        fields[.contentLength] = String(json.utf8.count)
        fields[.cacheControl] = "no-store"
        fields[.date] = runtime.dates.current
        exchange.status = problem.status
        exchange.problem = problem.type.rawValue
        let head = HTTPResponse(status: HTTPResponse.Status(code: problem.status), headerFields: fields)
        if request.method == .head {
            try await writer.writeResponse(head)
        } else {
            try await writer.write(response: head, body: ResponseBody(byteBuffer: ByteBuffer(string: json)))
        }
    }

    private func finish(_ exchange: Exchange, started: ContinuousClock.Instant) {
        let duration = ContinuousClock.now - started
        let status = exchange.clientGone && exchange.status == 0 ? 499 : exchange.status
        runtime.metrics.requestFinished(
            partner: exchange.partner, version: exchange.version, route: exchange.route, status: status, duration: duration
        )
        var metadata: Logger.Metadata = [
            "request_id": .string(exchange.requestID),
            "method": .string(exchange.method),
            "path": .string(String(exchange.path)),
            "status": .stringConvertible(status),
            "duration_ms": .stringConvertible(duration.milliseconds),
            "bytes_in": .stringConvertible(exchange.bytesIn),
            "bytes_out": .stringConvertible(exchange.bytesOut),
        ]
        if let partner = exchange.partner { metadata["partner"] = .string(partner) }
        if let version = exchange.version { metadata["version"] = .string(version) }
        if let route = exchange.route { metadata["route"] = .string(route) }
        if let upstream = exchange.upstream { metadata["upstream"] = .string(upstream) }
        if let problem = exchange.problem { metadata["problem"] = .string(problem) }
        if let error = exchange.upstreamError { metadata["error"] = .string(error) }
        if exchange.clientGone { metadata["client_gone"] = .stringConvertible(true) }
        runtime.logger.log(level: status >= 500 ? .warning : .info, "request", metadata: metadata)
    }

    // MARK: - Request checks

    /// Request target plus header names and values, as the HTTP/1.1 decoder counts them.
    static func headerBytes(_ request: Request) -> Int {
        var total = request.head.path?.utf8.count ?? 0
        for field in request.headers { total += field.name.rawName.utf8.count + field.value.utf8.count }
        return total
    }

    private static func declaredBodyLength(_ request: Request) -> Result<BodyLength, RequestBodyFailure> {
        let lengths = request.headers[values: .contentLength]
        if let first = lengths.first {
            guard lengths.allSatisfy({ $0 == first }), let length = Int(first), length >= 0 else { return .failure(.malformed) }
            return .success(length == 0 ? .none : .known(length))
        }
        if request.headers[.transferEncoding] != nil { return .success(.unknown) }
        // Only HTTP/2 requests get here (RequestGuard gives body-less HTTP/1.1 requests a
        // Content-Length of 0): a body may follow in DATA frames.
        switch request.method {
        case .get, .head, .options, .trace: return .success(.none)
        default: return .success(.unknown)
        }
    }

    /// `Connection: close` for answers that leave a large or unbounded request body unread:
    /// draining it would cost more than a new connection.
    private func closeHeadersIfBodyIsLarge(_ request: Request) -> HTTPFields {
        let large = request.headers[.transferEncoding] != nil || (request.headers[.contentLength].flatMap(Int.init) ?? 0) > 64 << 10
        return large ? [.connection: "close"] : [:]
    }
}

extension Duration {
    /// Milliseconds with microsecond precision, for logs.
    var milliseconds: Double {
        Double(components.seconds) * 1_000 + Double(components.attoseconds / 1_000_000_000_000) / 1_000
    }
}

extension HTTPFields {
    /// These fields plus `name: value`.
    func adding(_ name: HTTPField.Name, _ value: String) -> HTTPFields {
        var fields = self
        fields.append(HTTPField(name: name, value: value))
        return fields
    }
}

/// What happened to one partner request, for the response, the access log and the metrics.
struct Exchange {
    let requestID: String
    let method: String
    /// Path without the query.
    let path: Substring
    /// `?…` or empty.
    let query: Substring
    var partner: String?
    var version: String?
    var route: String?
    var upstream: String?
    var status = 0
    var problem: String?
    var upstreamError: String?
    var bytesIn = 0
    var bytesOut = 0
    var clientGone = false
    /// Headers every response to this request carries.
    var responseHeaders: HTTPFields

    init(request: Request, identifiers: IdentifierGenerator) {
        let incoming = request.headers[.xRequestID]
        requestID = incoming.flatMap { RequestIdentity.isValidRequestID($0) ? $0 : nil } ?? identifiers.requestID()
        method = request.method.rawValue
        let target = Substring(request.head.path ?? "")
        if let question = target.firstIndex(of: "?") {
            path = target[..<question]
            query = target[question...]
        } else {
            path = target
            query = ""
        }
        responseHeaders = [.xRequestID: requestID]
    }

    /// Adds the RateLimit headers (and Retry-After for refusals) to every response.
    mutating func adopt(_ admission: Admission) {
        guard let limits = admission.limits, let decision = admission.decision else { return }
        if let policy = RateLimitHeaders.policy(limits, decision) { responseHeaders.append(HTTPField(name: .rateLimitPolicy, value: policy)) }
        if let state = RateLimitHeaders.state(limits, decision) { responseHeaders.append(HTTPField(name: .rateLimit, value: state)) }
        if decision.verdict != .admitted {
            responseHeaders.append(HTTPField(name: .retryAfter, value: String(RateLimitHeaders.retryAfter(decision))))
        }
    }

    /// Records the version and adds its Deprecation and Sunset headers to every response.
    mutating func adopt(version rules: VersionRules) {
        version = rules.version.name
        if let deprecation = rules.deprecationHeader { responseHeaders.append(HTTPField(name: .deprecation, value: deprecation)) }
        if let sunset = rules.sunsetHeader { responseHeaders.append(HTTPField(name: .sunset, value: sunset)) }
    }
}
