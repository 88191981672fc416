import Foundation
import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// An OTLP/HTTP trace receiver on loopback (JSON encoding): keeps every span it is sent.
final class OTLPReceiver: Sendable {
    struct ReceivedSpan: Sendable {
        var traceID: String
        var spanID: String
        var parentSpanID: String
        var name: String
        var kind: Int
        var attributes: [String: String]
        var service: String?
    }

    private let received = Mutex<[ReceivedSpan]>([])
    private let paths = Mutex<Set<String>>([])

    var spans: [ReceivedSpan] { received.withLock { $0 } }
    var requestPaths: Set<String> { paths.withLock { $0 } }

    func server(logger: Logger, onListening: @escaping @Sendable (Int) -> Void) -> Server<HTTP1Channel> {
        Server(
            childChannelSetup: HTTP1Channel(responder: { request, writer, _ in
                var body = Data()
                for try await chunk in request.body { body.append(contentsOf: chunk.readableBytesView) }
                self.paths.withLock { _ = $0.insert(request.head.path ?? "") }
                let spans = Self.parse(body)
                self.received.withLock { $0 += spans }
                try await writer.write(
                    response: .init(status: .ok, headerFields: [.contentType: "application/json", .contentLength: "2"]),
                    body: ResponseBody(byteBuffer: ByteBuffer(string: "{}"))
                )
            }),
            configuration: ServerConfiguration(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { onListening($0.localAddress?.port ?? 0) },
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            logger: logger
        )
    }

    /// The spans of an `ExportTraceServiceRequest` in OTLP JSON (ids as hex, or base64 as protobuf's JSON writes bytes).
    static func parse(_ body: Data) -> [ReceivedSpan] {
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else { return [] }
        var spans: [ReceivedSpan] = []
        for resourceSpans in object["resourceSpans"] as? [[String: Any]] ?? [] {
            let resource = (resourceSpans["resource"] as? [String: Any])?["attributes"] as? [[String: Any]] ?? []
            let service = attributes(resource)["service.name"]
            for scope in resourceSpans["scopeSpans"] as? [[String: Any]] ?? [] {
                for span in scope["spans"] as? [[String: Any]] ?? [] {
                    spans.append(ReceivedSpan(
                        traceID: hex(span["traceId"]), spanID: hex(span["spanId"]), parentSpanID: hex(span["parentSpanId"]),
                        name: span["name"] as? String ?? "", kind: kind(span["kind"]),
                        attributes: attributes(span["attributes"] as? [[String: Any]] ?? []), service: service
                    ))
                }
            }
        }
        return spans
    }

    private static func hex(_ value: Any?) -> String {
        guard let text = value as? String, !text.isEmpty else { return "" }
        if text.allSatisfy(\.isHexDigit), text.count == 16 || text.count == 32 { return text.lowercased() }
        guard let data = Data(base64Encoded: text) else { return text }
        return data.map { String(format: "%02x", $0) }.joined()
    }

    private static func kind(_ value: Any?) -> Int {
        if let number = value as? Int { return number }
        let names = ["SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT", "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"]
        return names.firstIndex(of: value as? String ?? "") ?? -1
    }

    private static func attributes(_ list: [[String: Any]]) -> [String: String] {
        var attributes: [String: String] = [:]
        for item in list {
            guard let key = item["key"] as? String, let value = item["value"] as? [String: Any], let first = value.first else { continue }
            attributes[key] = "\(first.value)"
        }
        return attributes
    }
}

/// Runs an OTLP receiver on a free loopback port while `body` runs.
func withOTLPReceiver<T: Sendable>(_ body: (OTLPReceiver, Int) async throws -> T) async throws -> T {
    let receiver = OTLPReceiver()
    var logger = Logger(label: "otlp-receiver")
    logger.logLevel = .critical
    return try await withListeningService({ receiver.server(logger: logger, onListening: $0) }) { port in try await body(receiver, port) }
}
