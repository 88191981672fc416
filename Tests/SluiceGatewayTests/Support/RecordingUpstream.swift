import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import Synchronization
import TestSupport

/// An upstream that records, for each request, how its body ended (read to the end, or failed
/// part way), and answers as the test scripts it: a status, optionally after a delay, or held
/// until the test releases it.
final class RecordingUpstream: Sendable {
    struct Received: Sendable {
        var path: String
        var bytes: Int
        var complete: Bool
        /// The request's headers (lowercased names).
        var headers: [(String, String)] = []

        func header(_ name: String) -> String? { headers.first { $0.0 == name }?.1 }
    }

    private struct Script {
        var status = 200
        var body = ""
        var headers: [(String, String)] = []
        var delay: Duration = .zero
        var holding = false
        var held: [CheckedContinuation<Void, Never>] = []
    }

    private let received = Mutex<[Received]>([])
    private let started = Mutex(0)
    private let script = Mutex(Script())

    /// Requests whose body reading has ended (completely or not).
    var requests: [Received] { received.withLock { $0 } }
    /// Requests whose head has arrived.
    var startedCount: Int { started.withLock { $0 } }
    /// Answers waiting for `release()`.
    var heldCount: Int { script.withLock { $0.held.count } }

    /// From now on, answers `status` with `body` (default empty) after `delay`.
    func reply(_ status: Int, body: String = "", headers: [(String, String)] = [], after delay: Duration = .zero) {
        script.withLock {
            $0.status = status
            $0.body = body
            $0.headers = headers
            $0.delay = delay
        }
    }

    /// From now on, holds every answer until `release()`.
    func hold() {
        script.withLock { $0.holding = true }
    }

    /// Lets held answers (and later ones) go.
    func release() {
        let held = script.withLock { script in
            defer { script = Script(status: script.status, body: script.body, headers: script.headers, delay: script.delay) }
            return script.held
        }
        for continuation in held { continuation.resume() }
    }

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
                let record = Received(
                    path: request.head.path ?? "", bytes: bytes, complete: complete,
                    headers: request.head.headerFields.map { ($0.name.canonicalName, $0.value) }
                )
                self.received.withLock { $0.append(record) }
                let (status, body, headers, delay) = self.script.withLock { ($0.status, $0.body, $0.headers, $0.delay) }
                if delay > .zero { try await Task.sleep(for: delay) }
                await self.waitWhileHeld()
                var fields: HTTPFields = status == 304 ? [:] : [.contentLength: String(body.utf8.count)]
                for (name, value) in headers { if let field = HTTPField.Name(name) { fields.append(HTTPField(name: field, value: value)) } }
                try await writer.write(
                    response: .init(status: .init(code: status), headerFields: fields),
                    body: ResponseBody(byteBuffer: ByteBuffer(string: status == 304 ? "" : body))
                )
            }),
            configuration: ServerConfiguration(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { onListening($0.localAddress?.port ?? 0) },
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            logger: logger
        )
    }

    private func waitWhileHeld() async {
        await withCheckedContinuation { continuation in
            let holding = script.withLock { script in
                if script.holding { script.held.append(continuation) }
                return script.holding
            }
            if !holding { continuation.resume() }
        }
    }
}

/// Runs a gateway whose upstream `name` is `recorder` with extra `settings` (YAML lines, e.g.
/// `max_in_flight: 2`); `configure` may change the policies further.
func withRecordingUpstream(
    _ recorder: RecordingUpstream, as name: String = "main", settings: String = "", clock: ManualClock? = nil,
    _ configure: (inout TestPolicies) -> Void = { _ in }, _ body: (GatewayHarness) async throws -> Void
) async throws {
    var logger = Logger(label: "recorder")
    logger.logLevel = .critical
    try await withListeningService({ recorder.server(logger: logger, onListening: $0) }) { port in
        try await GatewayHarness.with({ policies in
            policies.upstreams[name] = "url: http://127.0.0.1:\(port)\n" + settings
            configure(&policies)
        }, clock: clock, body)
    }
}

/// One gateway (or two sharing a Redis database when `count` is 2) whose upstream `main` is
/// `recorder` (with `settings`, YAML lines), with `routes` added (YAML flow mappings).
func withGateways(
    _ count: Int = 1, onRedis: Bool, clock: ManualClock? = nil, in recorder: RecordingUpstream, settings: String = "", routes: [String],
    _ body: ([GatewayHarness]) async throws -> Void
) async throws {
    let url = onRedis ? try await TaskDatabase.url() : nil
    var logger = Logger(label: "recorder")
    logger.logLevel = .critical
    try await withListeningService({ recorder.server(logger: logger, onListening: $0) }) { port in
        let configure: (inout TestPolicies) -> Void = { policies in
            policies.upstreams["main"] = "url: http://127.0.0.1:\(port)\n" + settings
            for route in routes { policies.addRoutes(route) }
            if let url { policies.useRedis(url, timeout: "2s") }
        }
        try await GatewayHarness.with(configure, clock: clock) { first in
            guard count > 1 else { return try await body([first]) }
            try await GatewayHarness.with(configure, clock: clock) { second in try await body([first, second]) }
        }
    }
}
