import Logging
import OTel
import ServiceLifecycle
import SluiceCore
import Tracing

/// Spans of partner requests, their upstream calls, task runs and webhook deliveries, exported by
/// OTLP/HTTP (swift-otel) when gateway.yaml names `tracing.otlp_endpoint`. Without one there is
/// no tracer: the W3C context still propagates (`RequestIdentity`), nothing is recorded.
///
/// Partner requests are sampled here, before swift-otel sees them: `tracing.sample_ratio` of
/// traces by trace id (the partner's sampled flag is not trusted at the edge — a partner could
/// otherwise make every request cost a recorded span). An unsampled request touches no tracing
/// code at all; its trace still propagates. Recording and exporting a request's two spans costs
/// about as much CPU as the request itself (loadtest/RESULTS.md), hence the low default.
///
/// Spans end into swift-otel's batch processor: a bounded queue (`maxQueueSize`) exported in
/// batches by a service off the request path; spans that find the queue full are dropped and
/// counted in `sluice_trace_spans_dropped_total`.
final class GatewayTracing: Sendable {
    private let tracer: (any Tracer)?
    /// Traces whose id's low 64 bits are below this are sampled.
    private let sampleBelow: UInt64

    /// No tracer: spans are not recorded.
    static let off = GatewayTracing(tracer: nil, sampleRatio: 0)

    private init(tracer: (any Tracer)?, sampleRatio: Double) {
        self.tracer = tracer
        sampleBelow = sampleRatio >= 1 ? .max : UInt64(min(sampleRatio * 0x1p64, 0x1.fffffffffffffp63))
    }

    /// Whether a partner request of `trace` is recorded.
    func samples(_ trace: TraceIdentity) -> Bool {
        guard tracer != nil, sampleBelow > 0 else { return false }
        guard sampleBelow < .max else { return true }
        return UInt64(trace.traceID.suffix(16), radix: 16).map { $0 < sampleBelow } ?? false
    }

    /// The tracer for `settings` and the service that exports its spans (nil without an endpoint).
    static func make(
        _ settings: GatewayPolicy.Tracing, exportInterval: Duration, logger: Logger, metrics: GatewayMetrics
    ) throws -> (GatewayTracing, (any Service)?) {
        guard let endpoint = settings.otlpEndpoint else { return (.off, nil) }
        var configuration = OTel.Configuration.default
        configuration.serviceName = settings.serviceName
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        configuration.propagators = [.traceContext]
        configuration.traces.sampler = .alwaysOn  // sampled before spans are started (`samples`)
        configuration.traces.otlpExporter.endpoint = endpoint
        configuration.traces.otlpExporter.protocol = settings.otlpProtocol == .json ? .httpJSON : .httpProtobuf
        configuration.traces.batchSpanProcessor.scheduleDelay = exportInterval
        configuration.diagnosticLogger = .custom(Logger(label: "sluice.otel") { _ in SpanDropCounter(base: logger, metrics: metrics) })
        let (tracer, service) = try OTel.makeTracingBackend(configuration: configuration)
        return (GatewayTracing(tracer: tracer, sampleRatio: settings.sampleRatio), service)
    }

    /// Starts a span continuing the W3C context in `traceparent`/`tracestate` (a new trace when
    /// there is none or it is not valid); nil when tracing is off.
    func start(_ name: String, kind: SpanKind, traceparent: String?, tracestate: String? = nil) -> (any Span)? {
        guard let tracer else { return nil }
        var context = ServiceContext.topLevel
        if let traceparent {
            var carrier = ["traceparent": traceparent]
            if let tracestate { carrier["tracestate"] = tracestate }
            tracer.extract(carrier, into: &context, using: DictionaryCarrier())
        }
        return tracer.startSpan(name, context: context, ofKind: kind)
    }

    /// Starts a child span of `parent`.
    func start(_ name: String, kind: SpanKind, parent: any Span) -> (any Span)? {
        tracer?.startSpan(name, context: parent.context, ofKind: kind)
    }

    /// The `traceparent` naming `span` as the parent.
    func traceparent(of span: any Span) -> String? {
        guard let tracer else { return nil }
        var carrier: [String: String] = [:]
        tracer.inject(span.context, into: &carrier, using: DictionaryCarrier())
        return carrier["traceparent"]
    }
}

extension Span {
    /// Ends the span with an error status when `failure` is set or `status` is a 5xx.
    func end(status: Int?, failure: String? = nil) {
        if let status { attributes["http.response.status_code"] = status }
        if let failure {
            setStatus(SpanStatus(code: .error, message: failure))
        } else if let status, status >= 500 {
            setStatus(SpanStatus(code: .error))
        }
        end()
    }
}

/// W3C headers in a dictionary, for extracting and injecting span contexts.
private struct DictionaryCarrier: Extractor, Injector {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}

/// swift-otel's diagnostic log, forwarded to the gateway's log; its report of spans dropped
/// because the export queue was full is counted in `sluice_trace_spans_dropped_total`.
private struct SpanDropCounter: LogHandler {
    let base: Logger
    let metrics: GatewayMetrics
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata.merging(event.metadata ?? [:]) { $1 }
        if case .stringConvertible(let count)? = merged["dropped_count"] ?? nil, let dropped = Int("\(count)") {
            metrics.spansDropped(dropped)
        } else if case .string(let count)? = merged["dropped_count"], let dropped = Int(count) {
            metrics.spansDropped(dropped)
        }
        merged["component"] = "otel"
        base.log(level: event.level, event.message, metadata: merged, source: event.source, file: event.file, function: event.function, line: event.line)
    }
}
