import Logging
import NIOCore
import SluiceCore

/// Stage 7 of the request path, once per request: metrics, usage counts and the access log line.
enum RequestFinisher {
    /// Call on `eventLoop`, the loop that served the request.
    static func finished(_ record: RequestRecord, runtime: GatewayRuntime, on eventLoop: any EventLoop) {
        let status = record.reportedStatus
        let duration = Duration.nanoseconds((NIODeadline.now() - record.started).nanoseconds)
        runtime.metrics.requestFinished(partner: record.partner, version: record.version, route: record.route, status: status, duration: duration, on: eventLoop)
        runtime.usage.count(record, status: status, duration: duration, on: eventLoop)
        runtime.accessLog.record(record, status: status, duration: duration, on: eventLoop)
        if let canary = record.canary, let route = record.route, record.target != nil {
            runtime.canaryCallEnded(canary, route: route, failed: status >= 500)
        }
    }

    /// A malformed request answered before it had a record; call on `eventLoop`, its connection's loop.
    static func protocolError(status: Int, requestID: String, runtime: GatewayRuntime, on eventLoop: any EventLoop) {
        runtime.metrics.requestFinished(partner: nil, version: nil, route: nil, status: status, duration: .zero, on: eventLoop)
        runtime.logger.info("request", metadata: ["request_id": .string(requestID), "status": .stringConvertible(status), "problem": "invalid-request"])
    }
}
