import Foundation
import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import SluiceCore
import Synchronization

/// A partner's webhook receiver on loopback: checks each delivery's Standard Webhooks signature
/// with the partner's secret and answers as the test scripts it (a list of statuses, then a default).
final class WebhookReceiver: Sendable {
    /// The secret of the Standard Webhooks reference tests.
    static let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

    struct Delivery: Sendable {
        var id: String
        var timestamp: Int64
        var body: Data
        var verified: Bool
        var userAgent: String?

        func json() throws -> [String: Any] {
            try JSONSerialization.jsonObject(with: body) as? [String: Any] ?? [:]
        }
    }

    private let received = Mutex<[Delivery]>([])
    private let script = Mutex<(next: [Int], then: Int)>(([], 204))

    /// Every delivery so far, in arrival order.
    var deliveries: [Delivery] { received.withLock { $0 } }

    /// Answers `statuses` to the next deliveries, then `then` to all later ones.
    func answer(_ statuses: [Int], then: Int = 204) {
        script.withLock { $0 = (statuses, then) }
    }

    func server(logger: Logger, onListening: @escaping @Sendable (Int) -> Void) -> Server<HTTP1Channel> {
        let key = try! WebhookSecret(Self.secret)
        return Server(
            childChannelSetup: HTTP1Channel(responder: { request, writer, _ in
                var body = Data()
                for try await chunk in request.body { body.append(contentsOf: chunk.readableBytesView) }
                let headers = request.head.headerFields
                let id = headers[HTTPField.Name("webhook-id")!] ?? ""
                let timestamp = Int64(headers[HTTPField.Name("webhook-timestamp")!] ?? "") ?? 0
                let verified = WebhookSignature.verify(
                    signatures: headers[HTTPField.Name("webhook-signature")!] ?? "", id: id, timestamp: timestamp, body: body, secret: key,
                    now: Int64(Date().timeIntervalSince1970)
                )
                let delivery = Delivery(id: id, timestamp: timestamp, body: body, verified: verified, userAgent: headers[.userAgent])
                self.received.withLock { $0.append(delivery) }
                let status = self.script.withLock { script in script.next.isEmpty ? script.then : script.next.removeFirst() }
                try await writer.write(
                    response: .init(status: .init(code: status), headerFields: [.contentLength: "0"]), body: ResponseBody()
                )
            }),
            configuration: ServerConfiguration(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { onListening($0.localAddress?.port ?? 0) },
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            logger: logger
        )
    }
}

/// Runs a webhook receiver on a free loopback port while `body` runs.
func withWebhookReceiver<T: Sendable>(_ body: (WebhookReceiver, Int) async throws -> T) async throws -> T {
    let receiver = WebhookReceiver()
    var logger = Logger(label: "webhook-receiver")
    logger.logLevel = .critical
    return try await withListeningService({ receiver.server(logger: logger, onListening: $0) }) { port in try await body(receiver, port) }
}
