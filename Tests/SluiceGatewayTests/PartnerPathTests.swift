import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
import Synchronization
import TestSupport
import Testing

/// The partner listeners' connection handling (issue 10): pipelining, `Host`, back-pressure
/// both ways, HTTP/2 stream limits and reset floods, TLS 1.2 cipher suites.
@Suite(.serialized)
struct PartnerPathTests {
    private let key = TestKeys.acme

    /// Four requests written at once on one connection are answered in their order, even when
    /// the first one's upstream is the slowest and one is refused by the gateway itself.
    @Test func pipelinedRequestsAreAnsweredInOrder() async throws {
        try await GatewayHarness.with { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            let requests = ["/v2/long?ms=300", "/v2/orders/2", "/v2/nowhere", "/v2/status/201"].map {
                "GET \($0) HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\n\r\n"
            }
            try await connection.send(requests.joined())
            let text = try await connection.read(until: "{\"status\":201}", timeout: .seconds(10))
            let statuses = text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix(3) }
            #expect(statuses == ["200", "200", "404", "201"])
            let slept = try #require(text.range(of: "\"slept_ms\":300"))
            let echoed = try #require(text.range(of: "/api/echo/2"))
            #expect(slept.lowerBound < echoed.lowerBound, "the slow first request is answered first")
            await connection.close()
        }
    }

    /// An HTTP/1.1 request without Host is 400 (RFC 9112 §3.2) and never forwarded; HTTP/1.0 needs none.
    @Test func requestWithoutHostIs400() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send("GET /v2/orders/1 HTTP/1.1\r\nX-API-Key: \(key)\r\n\r\n")
            let text = try await connection.read(until: "}")
            #expect(text.hasPrefix("HTTP/1.1 400"))
            #expect(text.contains("urn:sluice:problem:invalid-request") && text.contains("Host"))
            #expect(recorder.startedCount == 0)
            await connection.close()

            let old = try await RawConnection.open(port: gateway.addresses.http!)
            try await old.send("GET /v2/orders/1 HTTP/1.0\r\nX-API-Key: \(key)\r\n\r\n")
            let (answer, closed) = try await old.readUntilClosed(timeout: .seconds(5))
            #expect(answer.hasPrefix("HTTP/1.0 200"))
            #expect(closed, "an HTTP/1.0 request without keep-alive ends its connection")
            #expect(recorder.startedCount == 1)
        }
    }

    /// A partner that stops reading a 256 MiB response stops the upstream too: the gateway reads
    /// from the upstream only as fast as the partner takes it, so it never holds the body. (The
    /// bodies are large because loopback sockets here may buffer tens of MiB by themselves.)
    @Test func slowPartnerPausesTheUpstream() async throws {
        let total = 256 << 20
        let upstream = try await RawUpstream.start(.streaming(bytes: total))
        try await GatewayHarness.with({ $0.upstreams["main"] = "url: http://127.0.0.1:\(upstream.port)" }) { gateway in
            let client = try await SlowClient.connect(port: gateway.addresses.http!)
            try await client.send("GET /v2/bytes HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\n\r\n")
            try await client.read(atLeast: 1 << 20)
            try await eventually(timeout: .seconds(30), "the upstream is held back or has sent everything") {
                upstream.isStalled || upstream.sent == total
            }
            // What is in flight is only what the sockets on the way buffer (a few MiB on loopback).
            #expect(upstream.sent < total / 2, "the upstream sent \(upstream.sent) bytes to a partner that read \(client.received)")
            try await client.read(atLeast: total)
            #expect(upstream.sent == total)
            await client.close()
        }
        await upstream.stop()
    }

    /// An upstream that stops reading a 256 MiB upload stops the partner's upload too: the
    /// gateway reads from the partner only as fast as the upstream takes it. A hold longer than
    /// `idle_timeout` (1 s here) is back-pressure, not an idle partner: the upload then completes.
    @Test func slowUpstreamPausesThePartner() async throws {
        let total = 256 << 20
        let upstream = try await RawUpstream.start(.slowReader(pauseAfter: 1 << 20))
        try await GatewayHarness.with({ policies in
            policies.upstreams["main"] = "url: http://127.0.0.1:\(upstream.port)"
            policies.setTimeouts(header: "10s", idle: "1s")
            policies.files["gateway.yaml"] = policies.files["gateway.yaml"]!.replacingOccurrences(of: "max_request_body: 1MiB", with: "max_request_body: 1GiB")
        }) { gateway in
            let client = try await SlowClient.connect(port: gateway.addresses.http!)
            client.upload("POST /v2/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\nContent-Length: \(total)\r\n\r\n", bodyBytes: total)
            try await eventually(timeout: .seconds(30), "the upload is held back or complete") { client.isStalled || client.sent == total }
            #expect(client.sent < total / 2, "the partner sent \(client.sent) bytes to an upstream that read \(upstream.received)")
            try await eventually("the upload is held for longer than idle_timeout") { client.isStalled(for: .milliseconds(1_500)) }
            upstream.release()
            try await eventually(timeout: .seconds(60), "the whole upload arrived") { upstream.received >= total }
            try await client.read(atLeast: 20)
            #expect(client.sent == total)
            await client.close()
        }
        await upstream.stop()
    }

    /// Thirty requests on one HTTP/2 connection are thirty streams, each admitted on its own:
    /// with concurrency 10, ten reach the upstream and twenty are refused 429 at once.
    @Test func concurrentHTTP2StreamsEachTakeASlot() async throws {
        let recorder = RecordingUpstream()
        recorder.hold()
        try await withRecordingUpstream(recorder, { $0.setPlan("{ concurrency: 10 }") }) { gateway in
            let responses = try await withThrowingTaskGroup(of: TestResponse.self) { group in
                for index in 0..<30 { group.addTask { try await gateway.partner(.GET, "/v2/orders/\(index)", client: gateway.http2) } }
                var refused: [TestResponse] = []
                for _ in 0..<20 { refused.append(try await group.next()!) }
                try await eventually("ten streams wait on the upstream") { recorder.heldCount == 10 }
                recorder.release()
                var all = refused
                for try await response in group { all.append(response) }
                return all
            }
            #expect(responses.allSatisfy { $0.version == .http2 })
            #expect(responses.filter { $0.status == 200 }.count == 10)
            let refused = responses.filter { $0.status == 429 }
            #expect(refused.count == 20)
            #expect(try refused.allSatisfy { try $0.json()["type"] as? String == "urn:sluice:problem:concurrency-limited" })
            #expect(recorder.startedCount == 10)
        }
    }

    /// The rapid-reset pattern (CVE-2023-44487: HEADERS then RST_STREAM, over and over) costs
    /// the attacker its connection after a bounded number of resets; the gateway serves on.
    @Test func http2RapidResetClosesTheConnection() async throws {
        let recorder = RecordingUpstream()
        recorder.hold()
        try await withRecordingUpstream(recorder) { gateway in
            let attacker = try await RawHTTP2Client.connect(port: gateway.addresses.https!, tls: try gateway.pki.clientTLS())
            let sent = await attacker.resetLoop(path: "/v2/orders/1", key: key, times: 2_000)
            #expect(sent < 1_000, "the connection outlived \(sent) resets")
            #expect(recorder.startedCount < 1_000)
            recorder.release()
            #expect(try await gateway.partner(.GET, "/v2/orders/1", client: gateway.http2).status == 200)
        }
    }

    /// TLS 1.2 offers only ECDHE suites with AEAD ciphers: a client that speaks only CBC
    /// suites is refused, one with AES-GCM works.
    @Test func tls12RefusesCBCOnlyClients() async throws {
        try await GatewayHarness.with { gateway in
            for (suite, works) in [(NIOTLSCipher.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, false), (.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, false), (.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, true)] {
                var configuration = try GatewayHarness.clientConfiguration(gateway.pki, .http1Only)
                configuration.tlsConfiguration?.maximumTLSVersion = .tlsv12
                configuration.tlsConfiguration?.cipherSuiteValues = [suite]
                configuration.connectionPool.retryConnectionEstablishment = false
                let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
                let response = try? await gateway.partner(.GET, "/v2/orders/1", client: client)
                #expect((response?.status == 200) == works, "TLS 1.2 with \(suite)")
                try await client.shutdown()
            }
        }
    }
}

/// A TCP client that reads only as much as it is told to (autoRead off), and uploads only
/// while its connection is writable, counting what the kernel took.
final class SlowClient: Sendable {
    private let channel: any Channel
    private let counter: Counter

    private final class Counter: Sendable {
        let received = Atomic<Int>(0)
        let wanted = Atomic<Int>(0)
        let upload = TransferMeter()
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let counter: Counter
        init(_ counter: Counter) { self.counter = counter }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            counter.received.add(unwrapInboundIn(data).readableBytes, ordering: .relaxed)
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            if counter.received.load(ordering: .relaxed) < counter.wanted.load(ordering: .relaxed) { context.read() }
        }

        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if context.channel.isWritable { counter.upload.writeWhileWritable(context) }
        }

        func upload(_ head: String, bodyBytes: Int, context: ChannelHandlerContext) {
            context.write(wrapOutboundOut(ByteBuffer(string: head)), promise: nil)
            counter.upload.start(bodyBytes, context)
        }
    }

    private init(channel: any Channel, counter: Counter) {
        self.channel = channel
        self.counter = counter
    }

    var received: Int { counter.received.load(ordering: .relaxed) }
    /// Upload bytes the kernel took.
    var sent: Int { counter.upload.sent }
    /// The upload is held back by the gateway.
    var isStalled: Bool { counter.upload.isStalled }
    /// The upload has been held back for at least `duration`.
    func isStalled(for duration: Duration) -> Bool { counter.upload.isStalled(for: duration) }

    static func connect(port: Int) async throws -> SlowClient {
        let counter = Counter()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.autoRead, value: false)
            .channelOption(.socketOption(.so_rcvbuf), value: 64 << 10)
            .channelOption(.socketOption(.so_sndbuf), value: 64 << 10)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Handler(counter)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return SlowClient(channel: channel, counter: counter)
    }

    func send(_ text: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: text))
    }

    /// Sends `head` and then `bodyBytes` bytes, as fast as the connection takes them.
    func upload(_ head: String, bodyBytes: Int) {
        let channel = channel
        channel.eventLoop.execute {
            guard let context = try? channel.pipeline.syncOperations.context(handlerType: Handler.self),
                let handler = context.handler as? Handler
            else { return }
            handler.upload(head, bodyBytes: bodyBytes, context: context)
        }
    }

    /// Reads until at least `bytes` arrived in all, then stops reading.
    func read(atLeast bytes: Int) async throws {
        counter.wanted.store(bytes, ordering: .relaxed)
        channel.read()
        try await eventually(timeout: .seconds(60), "\(bytes) bytes arrived") { self.received >= bytes }
    }

    func close() async {
        try? await channel.close()
    }
}
