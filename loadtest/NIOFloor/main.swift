// The floor under any SwiftNIO gateway on this machine: an HTTP/1.1 server on one event loop
// that answers every request with a fixed 200 (the demo backend's `/status/200` body), and
// does nothing else — no routing, no partner, no log, no store. `loadtest/run` compares it with
// nginx's proxy_cache hit (target `nio-floor`), which says what share of nginx's rate a NIO
// request path can reach at all here.
//
// Usage: sluice-nio-floor PORT
import NIOCore
import NIOHTTP1
import NIOPosix

/// Answers each request once its end has arrived; flushes once per read batch.
final class FixedAnswer: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private static let body = ByteBuffer(string: #"{"status":200}"#)
    /// Made once: the floor does no per-request work it does not need.
    private static let head = HTTPResponseHead(
        version: .http1_1, status: .ok, headers: ["Content-Type": "application/json", "Content-Length": String(body.readableBytes)]
    )

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        context.write(wrapOutboundOut(.head(Self.head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(Self.body))), promise: nil)
        context.write(wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

guard CommandLine.arguments.count == 2, let port = Int(CommandLine.arguments[1]) else {
    fatalError("usage: sluice-nio-floor PORT")
}
let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let channel = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 256)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline()
            try channel.pipeline.syncOperations.addHandler(FixedAnswer())
        }
    }
    .bind(host: "127.0.0.1", port: port).wait()
try channel.closeFuture.wait()
