import Logging
import NIOCore
import SluiceCore
import SluiceStore

/// The access log (stage 7): one JSON line per request, in the format of `JSONLogHandler`
/// (`timestamp`, `level`, `message`, then the request's fields), rendered straight into a
/// buffer of the event loop that served the request — no lock, no metadata dictionary per
/// request. A buffer is handed to `LogOutput` (queued for its writer thread) when it fills and
/// whenever `flush` comes by (the `LogFlusher`, a few times a second). Without a `LogOutput`
/// (Sluice embedded with another logging backend) lines go through the logger instead.
final class AccessLog: Sendable {
    /// One loop's pending lines; only touched on that loop.
    private final class LoopBuffer: @unchecked Sendable {
        var text = ""
    }

    private static let flushThreshold = 32 << 10

    private let output: LogOutput?
    private let logger: Logger
    private let buffers: LoopLocal<LoopBuffer>

    init(output: LogOutput?, logger: Logger, group: any EventLoopGroup) {
        self.output = output
        self.logger = logger
        buffers = LoopLocal(group: group) { _ in LoopBuffer() }
    }

    /// Records a finished request; call on `eventLoop`.
    func record(_ record: RequestRecord, status: Int, duration: Duration, on eventLoop: any EventLoop) {
        let level: Logger.Level = status >= 500 ? .warning : .info
        guard logger.logLevel <= level else { return }
        guard let output, let buffer = buffers[eventLoop] else {
            return logger.log(level: level, "request", metadata: Self.metadata(record, status: status, duration: duration))
        }
        Self.render(record, status: status, duration: duration, level: level, into: &buffer.text)
        if buffer.text.utf8.count >= Self.flushThreshold {
            output.write(buffer.text)
            buffer.text.removeAll(keepingCapacity: true)
        }
    }

    /// Writes out every loop's pending lines.
    func flush() async {
        guard let output else { return }
        _ = await buffers.collect { Self.drain($0, to: output) }
    }

    /// `flush()` for callers that cannot wait asynchronously (tests reading the log).
    func flushBlocking() {
        guard let output else { return }
        _ = buffers.collectBlocking { Self.drain($0, to: output) }
    }

    private static func drain(_ buffer: LoopBuffer, to output: LogOutput) {
        guard !buffer.text.isEmpty else { return }
        output.write(buffer.text)
        buffer.text.removeAll(keepingCapacity: true)
    }

    /// The line: as `JSONLogHandler` writes it, masking all but identifiers and numbers.
    static func render(_ record: RequestRecord, status: Int, duration: Duration, level: Logger.Level, into line: inout String) {
        line += "{\"timestamp\":\""
        Timestamp.append(to: &line)
        line += "\",\"level\":\""
        line += level.rawValue
        line += "\",\"message\":\"request\",\"bytes_in\":"
        line += String(record.bytesIn)
        line += ",\"bytes_out\":"
        line += String(record.bytesOut)
        if let cache = record.cache { field("cache", cache, into: &line) }
        if record.clientGone { line += ",\"client_gone\":true" }
        line += ",\"duration_ms\":"
        line += String(duration.fractionalMilliseconds)
        if let error = record.upstreamError { field("error", error, into: &line) }
        if let idempotency = record.idempotency { field("idempotency", idempotency.rawValue, into: &line) }
        field("method", record.method, into: &line)
        if let partner = record.partner { field("partner", partner, into: &line) }
        pathField(record.path, into: &line)
        if let problem = record.problem { field("problem", problem, into: &line) }
        line += ",\"request_id\":"
        JSONValue.appendQuoted(record.requestID, to: &line)
        if let route = record.route { field("route", route, into: &line) }
        line += ",\"status\":"
        line += String(status)
        line += ",\"trace_id\":\""
        line += record.trace.traceID
        line += "\""
        // From the policies, never partner data; an IPv4 address would look like a phone number.
        if let upstream = record.upstream { field("upstream", upstream, masked: false, into: &line) }
        if let target = record.target { field("target", target, masked: false, into: &line) }
        if let upstreamDuration = record.upstreamDuration {
            line += ",\"upstream_ms\":"
            line += String(upstreamDuration.fractionalMilliseconds)
        }
        if let version = record.version { field("version", version, into: &line) }
        line += "}\n"
    }

    private static func pathField(_ path: Substring, into line: inout String) {
        line += ",\"path\":"
        JSONValue.appendQuoted(SensitiveDataMask.maskPath(path), to: &line)
    }

    private static func field(_ key: StaticString, _ value: String, masked: Bool = true, into line: inout String) {
        line += ",\""
        line += key.description
        line += "\":"
        JSONValue.appendQuoted(masked ? SensitiveDataMask.mask(value) : value, to: &line)
    }

    /// The same fields as logger metadata.
    private static func metadata(_ record: RequestRecord, status: Int, duration: Duration) -> Logger.Metadata {
        var metadata: Logger.Metadata = [
            "request_id": .string(record.requestID),
            "trace_id": .string(record.trace.traceID),
            "method": .string(record.method),
            "path": .string(SensitiveDataMask.maskPath(record.path)),
            "status": .stringConvertible(status),
            "duration_ms": .stringConvertible(duration.fractionalMilliseconds),
            "bytes_in": .stringConvertible(record.bytesIn),
            "bytes_out": .stringConvertible(record.bytesOut),
        ]
        if let partner = record.partner { metadata["partner"] = .string(partner) }
        if let version = record.version { metadata["version"] = .string(version) }
        if let route = record.route { metadata["route"] = .string(route) }
        if let upstream = record.upstream { metadata["upstream"] = .string(upstream) }
        if let target = record.target { metadata["target"] = .string(target) }
        if let upstreamDuration = record.upstreamDuration { metadata["upstream_ms"] = .stringConvertible(upstreamDuration.fractionalMilliseconds) }
        if let problem = record.problem { metadata["problem"] = .string(problem) }
        if let error = record.upstreamError { metadata["error"] = .string(error) }
        if record.clientGone { metadata["client_gone"] = .stringConvertible(true) }
        if let idempotency = record.idempotency { metadata["idempotency"] = .string(idempotency.rawValue) }
        if let cache = record.cache { metadata["cache"] = .string(cache) }
        return metadata
    }
}
