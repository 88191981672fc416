import Crypto
import HTTPTypes
import HummingbirdCore
public import Logging
import NIOCore
import NIOPosix
public import ServiceLifecycle
import SluiceCore

/// A small, fast backend for trying the gateway and for load tests (`sluice demo-upstream`).
///
/// Answers any method on paths ending in:
/// - `/echo` (or with `echo` as any segment, e.g. `/api/echo/7`): the request as JSON —
///   `method`, `path`, `query`, `headers` (lower-case names), `body_bytes`, `body_sha256`;
/// - `/slow?ms=N`: after N ms, `{"slept_ms":N}`;
/// - `/status/CODE`: that status with `{"status":CODE}`;
/// - `/healthz`: 200 `{"status":"ok"}` (for the gateway's health probes);
/// - `/price?ms=N`: after N ms, `{"price":…,"currency":"EUR","idempotency_key":…}`;
/// - `/bytes?n=N`: N bytes; with `stall_after=M&stall_ms=T` it pauses T ms after byte M, with
///   `cut_after=M` it closes the connection after byte M (for the gateway's body timeout tests).
/// Anything else is 404.
public struct DemoUpstream: Service {
    private let server: Server<HTTP1Channel>

    /// - Parameters:
    ///   - delay: Added before every answer (a slower instance of a backend, for load tests).
    ///   - onListening: Called with the bound port (useful with port 0).
    public init(
        host: String = "127.0.0.1", port: Int, delay: Duration = .zero, logger: Logger, onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) {
        server = Server(
            childChannelSetup: HTTP1Channel(responder: { request, writer, _ in
                if delay > .zero { try await Task.sleep(for: delay) }
                try await Self.respond(request, writer)
            }),
            configuration: ServerConfiguration(address: .hostname(host, port: port), backlog: 1024),
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? port) },
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            logger: logger
        )
    }

    public func run() async throws {
        try await server.run()
    }

    static func respond(_ request: Request, _ writer: consuming ResponseWriter) async throws {
        let target = request.head.path ?? "/"
        let path: Substring
        let query: Substring
        if let question = target.firstIndex(of: "?") {
            path = target[..<question]
            query = target[target.index(after: question)...]
        } else {
            path = Substring(target)
            query = ""
        }
        let segments = path.split(separator: "/")

        if segments.contains("echo") {
            var hasher = SHA256()
            var bytes = 0
            for try await chunk in request.body {
                bytes += chunk.readableBytes
                chunk.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
            }
            let digest = hasher.finalize().map { String($0, radix: 16).leftPadded(to: 2) }.joined()
            var headers: [(String, String)] = []
            var seen: [String: Int] = [:]
            for field in request.headers {
                let name = field.name.canonicalName
                if let index = seen[name] {
                    headers[index].1 += ", " + field.value
                } else {
                    seen[name] = headers.count
                    headers.append((name, field.value))
                }
            }
            var json = "{\"method\":\(quoted(request.method.rawValue)),\"path\":\(quoted(path)),\"query\":\(quoted(query)),\"headers\":{"
            json += headers.map { "\(quoted($0.0)):\(quoted($0.1))" }.joined(separator: ",")
            json += "},\"body_bytes\":\(bytes),\"body_sha256\":\"\(digest)\"}"
            return try await writeJSON(.ok, json, writer)
        }
        switch segments.last {
        case "healthz":
            return try await writeJSON(.ok, "{\"status\":\"ok\"}", writer)
        case "slow":
            let milliseconds = parameter("ms", in: query) ?? 0
            try await Task.sleep(for: .milliseconds(milliseconds))
            return try await writeJSON(.ok, "{\"slept_ms\":\(milliseconds)}", writer)
        case "price":
            let milliseconds = parameter("ms", in: query) ?? 0
            try await Task.sleep(for: .milliseconds(milliseconds))
            let key = request.headers[HTTPField.Name("Idempotency-Key")!].map(quoted) ?? "null"
            let price = Double(path.utf8.reduce(0) { ($0 &* 31 &+ Int($1)) % 100_000 }) / 100 + 10
            return try await writeJSON(.ok, "{\"price\":\(price),\"currency\":\"EUR\",\"idempotency_key\":\(key)}", writer)
        case "bytes":
            let count = min(parameter("n", in: query) ?? 0, 1 << 34)
            let stallAfter = parameter("stall_after", in: query)
            let cutAfter = parameter("cut_after", in: query)
            var head = HTTPResponse(status: .ok)
            head.headerFields = [.contentType: "application/octet-stream", .contentLength: String(count)]
            var body = try await writer.writeHead(head)
            let chunk = ByteBuffer(repeating: UInt8(ascii: "x"), count: min(count, 64 << 10))
            var sent = 0
            var stalled = false
            while sent < count {
                // Pause or break off at exactly the requested byte, for timeout tests.
                if sent == cutAfter { throw BrokeOff() }
                if sent == stallAfter, !stalled {
                    stalled = true
                    try await Task.sleep(for: .milliseconds(parameter("stall_ms", in: query) ?? 0))
                }
                let stop = [stallAfter, cutAfter].compactMap { $0 }.filter { $0 > sent }.min() ?? count
                let size = min(count, stop, sent + chunk.readableBytes) - sent
                try await body.write(chunk.getSlice(at: 0, length: size)!)
                sent += size
            }
            return try await body.finish(nil)
        default:
            break
        }
        if segments.count >= 2, segments[segments.count - 2] == "status", let code = Int(segments[segments.count - 1]), (200...599).contains(code) {
            if code == 204 || code == 304 {
                return try await writer.writeResponse(HTTPResponse(status: .init(code: code)))
            }
            return try await writeJSON(.init(code: code), "{\"status\":\(code)}", writer)
        }
        try await writeJSON(.notFound, "{\"error\":\"not found\"}", writer)
    }

    private static func writeJSON(_ status: HTTPResponse.Status, _ json: String, _ writer: consuming ResponseWriter) async throws {
        let body = ByteBuffer(string: json)
        let head = HTTPResponse(status: status, headerFields: [.contentType: "application/json", .contentLength: String(body.readableBytes)])
        try await writer.write(response: head, body: ResponseBody(byteBuffer: body))
    }

    private static func parameter(_ name: String, in query: Substring) -> Int? {
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2, parts[0] == name, let value = Int(parts[1]), value >= 0 { return value }
        }
        return nil
    }

    private static func quoted(_ text: some StringProtocol) -> String {
        var out = ""
        JSONValue.appendQuoted(String(text), to: &out)
        return out
    }
}

/// Ends a `/bytes` answer part way (`cut_after`): the server closes the connection.
private struct BrokeOff: Error {}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
