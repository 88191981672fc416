import Logging
import NIOCore
import SluiceCore

/// Stage 7 of the request path, once per request: metrics and the access log line.
enum RequestFinisher {
    static func finished(_ record: RequestRecord, runtime: GatewayRuntime) {
        let status = record.reportedStatus
        let duration = Duration.nanoseconds((NIODeadline.now() - record.started).nanoseconds)
        runtime.metrics.requestFinished(partner: record.partner, version: record.version, route: record.route, status: status, duration: duration)
        var metadata: Logger.Metadata = [
            "request_id": .string(record.requestID),
            "method": .string(record.method),
            "path": .string(String(record.path)),
            "status": .stringConvertible(status),
            "duration_ms": .stringConvertible(duration.milliseconds),
            "bytes_in": .stringConvertible(record.bytesIn),
            "bytes_out": .stringConvertible(record.bytesOut),
        ]
        if let partner = record.partner { metadata["partner"] = .string(partner) }
        if let version = record.version { metadata["version"] = .string(version) }
        if let route = record.route { metadata["route"] = .string(route) }
        if let upstream = record.upstream { metadata["upstream"] = .string(upstream) }
        if let problem = record.problem { metadata["problem"] = .string(problem) }
        if let error = record.upstreamError { metadata["error"] = .string(error) }
        if record.clientGone { metadata["client_gone"] = .stringConvertible(true) }
        runtime.logger.log(level: status >= 500 ? .warning : .info, "request", metadata: metadata)
    }

    /// A malformed request answered before it had a record.
    static func protocolError(status: Int, requestID: String, runtime: GatewayRuntime) {
        runtime.metrics.requestFinished(partner: nil, version: nil, route: nil, status: status, duration: .zero)
        runtime.logger.info("request", metadata: ["request_id": .string(requestID), "status": .stringConvertible(status), "problem": "invalid-request"])
    }
}

extension Duration {
    /// Milliseconds with microsecond precision, for logs.
    var milliseconds: Double {
        Double(components.seconds) * 1_000 + Double(components.attoseconds / 1_000_000_000_000) / 1_000
    }
}
