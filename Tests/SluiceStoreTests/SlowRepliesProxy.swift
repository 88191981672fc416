import NIOCore
import NIOPosix

/// A TCP proxy on loopback in front of a real server that holds every chunk of the server's
/// replies for `delay` before passing it on (requests go through at once): a server as far away
/// as a slow network or a busy host makes it, in round trips.
final class SlowRepliesProxy: Sendable {
    let port: Int
    private let channel: any Channel

    private init(port: Int, channel: any Channel) {
        self.port = port
        self.channel = channel
    }

    static func start(to serverPort: Int, delay: TimeAmount) async throws -> SlowRepliesProxy {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { client in
                ClientBootstrap(group: client.eventLoop).connect(host: "127.0.0.1", port: serverPort).flatMap { server in
                    client.eventLoop.makeCompletedFuture {
                        try client.pipeline.syncOperations.addHandler(Relay(to: server, delay: nil))
                        try server.pipeline.syncOperations.addHandler(Relay(to: client, delay: delay))
                    }
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return SlowRepliesProxy(port: channel.localAddress!.port!, channel: channel)
    }

    func stop() async throws { try await channel.close() }
}

/// Passes what one side reads to the other, after `delay` when given (in order: each chunk is
/// held from when it arrived). Both channels are on one event loop.
private final class Relay: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let peer: any Channel
    private let delay: TimeAmount?

    init(to peer: any Channel, delay: TimeAmount?) {
        self.peer = peer
        self.delay = delay
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        let peer = peer
        guard let delay else { return peer.writeAndFlush(bytes, promise: nil) }
        context.eventLoop.scheduleTask(in: delay) { peer.writeAndFlush(bytes, promise: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer.close(promise: nil)
    }
}
