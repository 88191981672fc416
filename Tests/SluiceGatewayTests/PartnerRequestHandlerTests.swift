import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import SluiceCore
import SluiceStore
import Testing
@testable import SluiceGateway

/// The request handler shell on an `EmbeddedChannel`: HTTP/1.1 parts in, response parts out,
/// the embedded store deciding inline — no sockets, no upstream.
struct PartnerRequestHandlerTests {
    /// A runtime on one embedded loop, with the test policy plus an async route, and channels
    /// that each carry a `ConnectionWatchdog` and a `PartnerRequestHandler`.
    final class Fixture {
        let loop = EmbeddedEventLoop()
        let runtime: GatewayRuntime

        init() throws {
            let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
            let metrics = GatewayMetrics(group: loop)
            let identifiers = IdentifierGenerator()
            let factory = SnapshotFactory(
                pool: UpstreamPool(eventLoopGroup: loop, metrics: metrics, logger: logger, clock: { .now }),
                stores: StoreRegistry(group: loop, leaseDuration: .seconds(30), claimMargin: .seconds(60), clock: MemoryStore.wallClock, metrics: metrics, logger: logger),
                metrics: metrics, logger: logger, leaseDuration: .seconds(30), claimLeaseMargin: .seconds(60), instance: "test", wakeWorkers: {},
                clock: MemoryStore.wallClock, identifiers: identifiers
            )
            let policy = try PolicyFixturesForGateway.policy(routes: [
                "{ id: price, versions: [v2], method: POST, path: /price-calculations, upstream: main, async: always }"
            ])
            runtime = GatewayRuntime(
                snapshot: try factory.make(policy), identifiers: identifiers, metrics: metrics, logger: logger,
                accessLog: AccessLog(output: nil, logger: logger, group: loop), usage: UsageCounter(group: loop, clock: MemoryStore.wallClock), tracing: .off
            )
        }

        /// A new partner connection.
        func connection() throws -> EmbeddedChannel {
            let channel = EmbeddedChannel(loop: loop)
            let watchdog = ConnectionWatchdog(headerTimeout: .seconds(10), idleTimeout: .seconds(60))
            try channel.pipeline.syncOperations.addHandler(watchdog)
            let connection = PartnerConnection(channel: channel, scheme: "http", watchdog: watchdog)
            try channel.pipeline.syncOperations.addHandler(PartnerRequestHandler(connection: connection, runtime: runtime, isHTTP2: false, eventLoop: loop))
            watchdog.httpIsNegotiated()
            try channel.connect(to: SocketAddress(ipAddress: "192.0.2.7", port: 40_000)).wait()
            return channel
        }
    }

    private static func head(_ method: HTTPMethod, _ uri: String, key: String? = PolicyFixturesForGateway.acmeKey, _ extra: [(String, String)] = []) -> HTTPServerRequestPart {
        var headers: HTTPHeaders = ["Host": "gateway.test"]
        if let key { headers.add(name: "X-API-Key", value: key) }
        for (name, value) in extra { headers.add(name: name, value: value) }
        return .head(HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers))
    }

    /// Reads one whole response off the channel.
    private static func response(_ channel: EmbeddedChannel) throws -> (head: HTTPResponseHead, body: String)? {
        guard case .head(let head)? = try channel.readOutbound(as: HTTPServerResponsePart.self) else { return nil }
        var body = ""
        while let part = try channel.readOutbound(as: HTTPServerResponsePart.self) {
            switch part {
            case .body(.byteBuffer(let buffer)): body += String(buffer: buffer)
            case .end: return (head, body)
            default: continue
            }
        }
        return (head, body)
    }

    /// Pipelined requests are answered in order, each once; the end of an answered request
    /// that arrives afterwards is not taken for the next request.
    @Test func pipelinedRequestsAreAnsweredInOrder() throws {
        let fixture = try Fixture()
        let channel = try fixture.connection()
        for part in [Self.head(.GET, "/v2/orders/1", key: nil), .end(nil), Self.head(.GET, "/v2/nowhere"), .end(nil)] {
            try channel.writeInbound(part)
        }
        let first = try #require(try Self.response(channel))
        let second = try #require(try Self.response(channel))
        #expect(first.head.status == .unauthorized && first.body.contains("urn:sluice:problem:unauthorized"))
        #expect(second.head.status == .notFound)
        #expect(try Self.response(channel) == nil)
        #expect(channel.isActive)
    }

    /// An early answer to a request with a large declared body (401 before it is read) says
    /// `Connection: close` and closes rather than drain it.
    @Test func earlyAnswerToALargeBodyCloses() throws {
        let fixture = try Fixture()
        let channel = try fixture.connection()
        try channel.writeInbound(Self.head(.POST, "/v2/price-calculations", key: nil, [("Content-Length", String(1 << 20))]))
        let answer = try #require(try Self.response(channel))
        #expect(answer.head.status == .unauthorized && answer.head.headers.first(name: "Connection") == "close")
        fixture.loop.run()
        #expect(!channel.isActive)
    }

    /// A keyed task is accepted (202) and the key follows it: the same request again replays
    /// the 202 with the same task id.
    @Test func keyedTaskIsReplayedWithItsTask() throws {
        let fixture = try Fixture()
        var ids: [String] = []
        for attempt in 0..<2 {
            let channel = try fixture.connection()
            try channel.writeInbound(Self.head(.POST, "/v2/price-calculations", [("Idempotency-Key", "calc-1"), ("Content-Length", "2")]))
            try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "{}")))
            try channel.writeInbound(HTTPServerRequestPart.end(nil))
            let answer = try #require(try Self.response(channel))
            #expect(answer.head.status == .accepted)
            #expect(answer.head.headers.first(name: "Idempotent-Replayed") == (attempt == 0 ? nil : "true"))
            let document = try JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any]
            ids.append(document?["task_id"] as? String ?? "")
        }
        #expect(ids[0] == ids[1] && TaskID(ids[0]) != nil)
    }

    /// A client that leaves while its keyed task's body is still arriving gives the key back:
    /// the retry is accepted afresh.
    @Test func clientGoneBeforeTheAcceptReleasesTheKey() throws {
        let fixture = try Fixture()
        let gone = try fixture.connection()
        try gone.writeInbound(Self.head(.POST, "/v2/price-calculations", [("Idempotency-Key", "calc-2"), ("Content-Length", "4")]))
        try gone.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "{}")))
        gone.pipeline.fireChannelInactive()
        let retry = try fixture.connection()
        try retry.writeInbound(Self.head(.POST, "/v2/price-calculations", [("Idempotency-Key", "calc-2"), ("Content-Length", "4")]))
        try retry.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "{  }")))
        try retry.writeInbound(HTTPServerRequestPart.end(nil))
        let answer = try #require(try Self.response(retry))
        #expect(answer.head.status == .accepted && answer.head.headers.first(name: "Idempotent-Replayed") == nil)
    }

    /// A drain while a request's body is arriving: the request is still answered, with
    /// `Connection: close`, and the connection then closes; an idle connection closes at once.
    @Test func drainClosesAfterTheAnswer() throws {
        let fixture = try Fixture()
        let busy = try fixture.connection()
        try busy.writeInbound(Self.head(.POST, "/v2/price-calculations", [("Content-Length", "2")]))
        busy.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        try busy.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "{}")))
        try busy.writeInbound(HTTPServerRequestPart.end(nil))
        let answer = try #require(try Self.response(busy))
        #expect(answer.head.status == .accepted && answer.head.headers.first(name: "Connection") == "close")
        fixture.loop.run()
        #expect(!busy.isActive)

        let idle = try fixture.connection()
        idle.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        fixture.loop.run()
        #expect(!idle.isActive)
    }
}
