import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// An upstream that answers 200 and records, for each request, how its body ended: read to
/// the end, or failed part way.
final class RecordingUpstream: Sendable {
    struct Received: Sendable {
        var path: String
        var bytes: Int
        var complete: Bool
    }

    private let received = Mutex<[Received]>([])
    private let started = Mutex(0)

    /// Requests whose body reading has ended (completely or not).
    var requests: [Received] { received.withLock { $0 } }
    /// Requests whose head has arrived.
    var startedCount: Int { started.withLock { $0 } }

    func server(logger: Logger, onListening: @escaping @Sendable (Int) -> Void) -> Server<HTTP1Channel> {
        Server(
            childChannelSetup: HTTP1Channel(responder: { request, writer, _ in
                self.started.withLock { $0 += 1 }
                var bytes = 0
                var complete = false
                do {
                    for try await chunk in request.body { bytes += chunk.readableBytes }
                    complete = true
                } catch {}
                let record = Received(path: request.head.path ?? "", bytes: bytes, complete: complete)
                self.received.withLock { $0.append(record) }
                try await writer.writeResponse(.init(status: .ok, headerFields: [.contentLength: "0"]))
            }),
            configuration: ServerConfiguration(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { onListening($0.localAddress?.port ?? 0) },
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            logger: logger
        )
    }
}
