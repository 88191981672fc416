import SluiceCore
import Tracing

/// The spans of one sampled partner request (with `tracing.otlp_endpoint`): a server span continuing the
/// partner's W3C context and, for a forwarded request, a client span for the upstream call,
/// whose id is the one the upstream receives in `traceparent`.
struct RequestTracing {
    private(set) var server: (any Span)?
    private var upstream: (any Span)?

    /// Starts the server span when the request's trace is sampled; the record then carries its trace.
    init(_ head: PartnerRequestHead, record: inout RequestRecord, tracing: GatewayTracing, identifiers: IdentifierGenerator) {
        guard tracing.samples(record.trace) else { return }
        server = tracing.start(
            head.method.rawValue, kind: .server, traceparent: head.headers.first(name: "traceparent"), tracestate: head.headers.first(name: "tracestate")
        )
        if let server, let traceparent = tracing.traceparent(of: server) {
            record.trace = RequestIdentity.trace(incoming: traceparent, requestID: record.requestID, generator: identifiers)
        }
    }

    /// The `traceparent` the upstream receives: the client span's when tracing, else a new span
    /// id in the request's trace.
    mutating func startUpstream(_ name: String, record: RequestRecord, tracing: GatewayTracing, identifiers: IdentifierGenerator) -> String {
        if let server, let span = tracing.start("upstream \(name)", kind: .client, parent: server), let traceparent = tracing.traceparent(of: span) {
            span.attributes["sluice.upstream"] = name
            upstream = span
            return traceparent
        }
        return RequestIdentity.traceparent(record.trace, spanID: identifiers.next64())
    }

    /// The `traceparent` naming the server span (an accepted task's runs join it), else nil.
    func serverTraceparent(_ tracing: GatewayTracing) -> String? {
        server.flatMap(tracing.traceparent(of:))
    }

    /// Ends the upstream span at the response head (`status`) or a failure.
    mutating func upstreamEnded(status: Int?, failure: String? = nil) {
        upstream?.end(status: status, failure: failure)
        upstream = nil
    }

    /// Ends every open span with what the record says.
    mutating func finish(_ record: RequestRecord, status: Int) {
        if upstream != nil { upstreamEnded(status: nil, failure: record.upstreamError ?? "the client went away") }
        guard let server else { return }
        server.operationName = "\(record.method) \(record.route ?? UsageKey.unknown)"
        server.attributes["http.request.method"] = record.method
        server.attributes["url.path"] = SensitiveDataMask.maskPath(record.path)
        server.attributes["sluice.request_id"] = record.requestID
        if let route = record.route { server.attributes["http.route"] = route }
        if let partner = record.partner { server.attributes["sluice.partner"] = partner }
        if let version = record.version { server.attributes["sluice.version"] = version }
        if let problem = record.problem { server.attributes["sluice.problem"] = problem }
        server.end(status: status)
        self.server = nil
    }
}
