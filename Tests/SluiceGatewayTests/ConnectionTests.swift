import AsyncHTTPClient
import Foundation
import TestSupport
import HummingbirdCore
import Logging
import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import Synchronization
import Testing
@testable import SluiceGateway

@Suite(.serialized)
struct ConnectionTests {
    private let key = TestKeys.acme

    /// A client that sends part of a request head is disconnected after client_header_timeout
    /// (1 s here, with a 10 s idle timeout, so only the header timeout can explain the close).
    @Test func slowHeadersAreClosed() async throws {
        try await GatewayHarness.with({ $0.setTimeouts(header: "1s", idle: "10s") }) { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            let started = ContinuousClock.now
            try await connection.send("GET /v2/orders/1 HTTP/1.1\r\nHost: x\r\n")
            let (_, closed) = try await connection.readUntilClosed(timeout: .seconds(8))
            let elapsed = ContinuousClock.now - started
            #expect(closed)
            #expect(elapsed >= .milliseconds(900) && elapsed < .seconds(5), "closed after \(elapsed)")
        }
    }

    /// A keep-alive connection with nothing to do is closed after idle_timeout (1 s here, with a
    /// 10 s header timeout).
    @Test func idleConnectionsAreClosed() async throws {
        try await GatewayHarness.with({ $0.setTimeouts(header: "10s", idle: "1s") }) { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send("GET /v2/orders/1 HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\n\r\n")
            let response = try await connection.read(until: "\"body_sha256\"")
            #expect(response.hasPrefix("HTTP/1.1 200"))
            let idleSince = ContinuousClock.now
            let (_, closed) = try await connection.readUntilClosed(timeout: .seconds(8))
            let elapsed = ContinuousClock.now - idleSince
            #expect(closed && elapsed >= .milliseconds(900) && elapsed < .seconds(5), "closed after \(elapsed)")
        }
    }

    /// Garbage instead of HTTP gets a 400 problem and a closed connection.
    @Test func malformedRequestIs400() async throws {
        try await GatewayHarness.with { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send("HELLO THERE\r\n\r\n")
            let (text, closed) = try await connection.readUntilClosed(timeout: .seconds(5))
            #expect(text.hasPrefix("HTTP/1.1 400"))
            #expect(text.contains("application/problem+json") && text.contains("urn:sluice:problem:invalid-request"))
            #expect(closed)
        }
    }

    /// Content-Length together with Transfer-Encoding (request smuggling) is refused with 400 and never forwarded.
    @Test func conflictingFramingIs400() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send(
                "POST /v2/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/orders/1 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            let (text, closed) = try await connection.readUntilClosed(timeout: .seconds(5))
            #expect(text.hasPrefix("HTTP/1.1 400"))
            #expect(closed)
            #expect(recorder.requests.isEmpty)
        }
    }

    /// A chunked body with broken framing is 400 invalid-request, the connection is closed, and
    /// the upstream never sees a complete body.
    @Test func malformedChunkedBodyIs400() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send(
                "POST /v2/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
            )
            let (text, closed) = try await connection.readUntilClosed(timeout: .seconds(5))
            #expect(text.hasPrefix("HTTP/1.1 400"))
            #expect(text.contains("urn:sluice:problem:invalid-request"))
            #expect(closed)
            #expect(recorder.requests.allSatisfy { !$0.complete })
        }
    }

    /// A chunked upload cut off by the client never reaches the upstream as a complete body.
    @Test func truncatedUploadIsNotForwardedAsComplete() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send(
                "POST /v2/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
            )
            try await eventually("the upstream saw the request") { recorder.startedCount == 1 }
            await connection.close()
            try await eventually("the upstream's read of the body ended") { recorder.requests.count == 1 }
            let received = try #require(recorder.requests.first)
            #expect(!received.complete, "a cut-off body must not look complete upstream")
            // Control: the same upload, finished, arrives complete.
            let finished = try await RawConnection.open(port: gateway.addresses.http!)
            try await finished.send(
                "POST /v2/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            _ = try await finished.read(until: "\r\n\r\n")
            #expect(recorder.requests.count == 2)
            #expect(recorder.requests[1].complete && recorder.requests[1].bytes == 5)
        }
    }

    /// An HTTP/2 upload whose stream the client resets never reaches the upstream as a complete body.
    @Test func resetHTTP2UploadIsNotForwardedAsComplete() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            let (chunks, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
            continuation.yield(ByteBuffer(string: "hello"))
            var request = HTTPClientRequest(url: gateway.https + "/v2/orders")
            request.method = .POST
            request.headers.add(name: "X-API-Key", value: key)
            request.body = .stream(chunks, length: .unknown)
            let upload = Task { try await gateway.http2.execute(request, timeout: .seconds(10)) }
            try await eventually("the upstream saw the request") { recorder.startedCount == 1 }
            upload.cancel()
            _ = await upload.result
            continuation.finish()
            try await eventually("the upstream's read of the body ended") { recorder.requests.count == 1 }
            #expect(recorder.requests.first?.complete == false, "a reset body must not look complete upstream")
        }
    }
}

/// The HTTP/2 connection watchdog hears of every way a stream ends (issue 24 point 5): reset
/// streams and streams the gateway answered before their body ended no longer keep a
/// connection alive for ever, nor kill it while another stream still waits.
@Suite(.serialized)
struct HTTP2WatchdogTests {
    /// A gateway with `idle_timeout` 2 s before an upstream that holds every request until
    /// released, and a raw HTTP/2 client connected to its HTTPS listener.
    private func withHoldingUpstream(_ body: (GatewayHarness, RecordingUpstream, RawHTTP2Client) async throws -> Void) async throws {
        let recorder = RecordingUpstream()
        recorder.hold()
        try await withRecordingUpstream(recorder, { $0.setTimeouts(header: "10s", idle: "2s") }) { gateway in
            defer { recorder.release() }
            try await body(gateway, recorder, try await RawHTTP2Client.connect(port: gateway.addresses.https!, tls: try gateway.pki.clientTLS()))
        }
    }

    /// Three streams that wait for a slow upstream are reset by the client; the connection,
    /// idle after that, is closed after `idle_timeout` (2 s here).
    @Test func resetStreamsLeaveTheConnectionIdle() async throws {
        try await withHoldingUpstream { gateway, recorder, client in
            var streams: [any Channel] = []
            for index in 0..<3 { streams.append(try await client.open(.GET, "/v2/orders/\(index)", key: TestKeys.acme, endStream: true)) }
            try await eventually("the three requests wait at the upstream") { recorder.heldCount == 3 }
            for stream in streams { try? await stream.close().get() }  // RST_STREAM (CANCEL)
            let idleSince = ContinuousClock.now
            try await eventually(timeout: .seconds(15), "the idle connection is closed") { !client.isActive }
            #expect(ContinuousClock.now - idleSince < .seconds(8), "closed \(ContinuousClock.now - idleSince) after the resets")
        }
    }

    /// A stream answered 401 before its (large) body was sent is reset by the gateway; a long
    /// request on another stream of the same connection still gets its answer after more than
    /// `idle_timeout` (2 s), and the connection is closed only once idle.
    @Test func earlyAnswerDoesNotKillTheConnectionLater() async throws {
        try await withHoldingUpstream { gateway, recorder, client in
            let long = try await client.open(.GET, "/v2/orders/long", key: TestKeys.acme, endStream: true)
            try await eventually("the long request waits at the upstream") { recorder.heldCount == 1 }
            let refused = try await client.open(.POST, "/v2/orders", key: "sk_test_nobody", endStream: false, contentLength: 1 << 20)
            // The gateway answers 401 and resets the stream (its body is not worth reading).
            try await eventually("the early answer arrives") { client.status(of: refused) == 401 }
            try await Task.sleep(for: .milliseconds(3_500))  // longer than idle_timeout while the long request waits
            #expect(client.isActive, "the connection was closed while a stream still waited")
            recorder.release()
            try await eventually("the long request is answered") { client.status(of: long) == 200 && client.ended(long) }
            try await eventually(timeout: .seconds(15), "the connection, idle now, is closed") { !client.isActive }
        }
    }
}

/// An HTTP/2 client that opens streams by hand (HEADERS with or without END_STREAM, no body),
/// and records each stream's response status and end.
final class RawHTTP2Client: Sendable {
    private let channel: any Channel
    private let multiplexer: NIOHTTP2Handler.StreamMultiplexer
    private let responses = Mutex<[ObjectIdentifier: (status: Int?, ended: Bool)]>([:])

    private init(channel: any Channel, multiplexer: NIOHTTP2Handler.StreamMultiplexer) {
        self.channel = channel
        self.multiplexer = multiplexer
    }

    var isActive: Bool { channel.isActive }

    static func connect(port: Int, tls: TLSConfiguration) async throws -> RawHTTP2Client {
        var configuration = tls
        configuration.applicationProtocols = ["h2"]
        let context = try NIOSSLContext(configuration: configuration)
        // TLS and HTTP/2 go into the pipeline before the connection is up: added later, they
        // could miss the server's SETTINGS (it arrives once the handshake is done).
        let (channel, multiplexer) = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    try operations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                    let multiplexer = try operations.configureHTTP2Pipeline(mode: .client, connectionConfiguration: .init(), streamConfiguration: .init()) {
                        $0.eventLoop.makeSucceededVoidFuture()
                    }
                    return (channel, multiplexer)
                }
            }
        return RawHTTP2Client(channel: channel, multiplexer: multiplexer)
    }

    /// Opens a stream with HEADERS (and END_STREAM when `endStream`); returns the stream channel.
    func open(_ method: NIOHTTP1.HTTPMethod, _ path: String, key: String, endStream: Bool, contentLength: Int? = nil) async throws -> any Channel {
        let stream = try await multiplexer.createStreamChannel { stream in
            stream.eventLoop.makeCompletedFuture { try stream.pipeline.syncOperations.addHandler(Recorder(client: self)) }
        }.get()
        var headers: HPACKHeaders = [":method": method.rawValue, ":scheme": "https", ":authority": "localhost", ":path": path, "x-api-key": key]
        if let contentLength { headers.add(name: "content-length", value: String(contentLength)) }
        try await stream.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: headers, endStream: endStream))).get()
        return stream
    }

    /// Opens a stream with HEADERS and resets it at once, up to `times` times; returns how many
    /// resets went out before the server closed the connection (the rapid-reset attack).
    func resetLoop(path: String, key: String, times: Int) async -> Int {
        for index in 0..<times {
            guard channel.isActive, let stream = try? await open(.GET, path, key: key, endStream: true) else { return index }
            // Closing a stream that is still open sends RST_STREAM (CANCEL).
            try? await stream.close().get()
        }
        return times
    }

    func status(of stream: any Channel) -> Int? { responses.withLock { $0[ObjectIdentifier(stream)]?.status } }
    func ended(_ stream: any Channel) -> Bool { responses.withLock { $0[ObjectIdentifier(stream)]?.ended ?? false } }

    private final class Recorder: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTP2Frame.FramePayload
        let client: RawHTTP2Client
        init(client: RawHTTP2Client) { self.client = client }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let id = ObjectIdentifier(context.channel)
            switch unwrapInboundIn(data) {
            case .headers(let headers):
                let status = headers.headers.first(name: ":status").flatMap(Int.init)
                client.responses.withLock { $0[id, default: (nil, false)].status = status ?? $0[id]?.status; if headers.endStream { $0[id]?.ended = true } }
            case .data(let data):
                if data.endStream { client.responses.withLock { $0[id, default: (nil, false)].ended = true } }
            default:
                break
            }
        }
    }
}
