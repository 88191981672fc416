import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SluiceCore
@testable import SluiceStore

/// A seed node that answers as a Redis 6 cluster node does: `CLUSTER SHARDS` is an unknown
/// subcommand, `CLUSTER SLOTS` gives the real cluster's map (asked of `node` each time); any
/// other command is refused. It records the subcommands it was asked.
final class OlderClusterSeed: Sendable {
    let port: Int
    let asked: NIOLockedValueBox<[String]>
    private let channel: any Channel

    private init(port: Int, asked: NIOLockedValueBox<[String]>, channel: any Channel) {
        self.port = port
        self.asked = asked
        self.channel = channel
    }

    static func start(answeringFor node: RedisURL.Endpoint) async throws -> OlderClusterSeed {
        let asked = NIOLockedValueBox<[String]>([])
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(SeedHandler(node: node, asked: asked)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return OlderClusterSeed(port: channel.localAddress!.port!, asked: asked, channel: channel)
    }

    func stop() async throws { try await channel.close() }
}

private final class SeedHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private static let shards = encoded(["CLUSTER", "SHARDS"])
    private static let slots = encoded(["CLUSTER", "SLOTS"])

    private let node: RedisURL.Endpoint
    private let asked: NIOLockedValueBox<[String]>
    private var received: [UInt8] = []

    init(node: RedisURL.Endpoint, asked: NIOLockedValueBox<[String]>) {
        self.node = node
        self.asked = asked
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += Array(buffer: unwrapInboundIn(data))
        switch received {
        case Self.shards:
            asked.withLockedValue { $0.append("SHARDS") }
            answer(.error("ERR unknown subcommand 'SHARDS'. Try CLUSTER HELP."), context: context)
        case Self.slots:
            asked.withLockedValue { $0.append("SLOTS") }
            RedisConnection.oneShot(["CLUSTER", "SLOTS"], at: node, tls: nil, auth: nil, timeout: .seconds(5), on: context.eventLoop)
                .assumeIsolated().whenComplete { result in
                    self.answer((try? result.get()) ?? .error("ERR the cluster node did not answer"), context: context)
                }
        case _ where Self.shards.starts(with: received) || Self.slots.starts(with: received):
            return  // more of the command is on its way
        default:
            answer(.error("ERR unknown command"), context: context)
        }
        received = []
    }

    private func answer(_ reply: RedisReply, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 1024)
        Self.write(reply, into: &buffer)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    private static func encoded(_ command: [String]) -> [UInt8] {
        var buffer = ByteBuffer()
        RedisCommandEncoder.write(command, into: &buffer)
        return Array(buffer: buffer)
    }

    /// The reply in RESP2, as a server writes it.
    private static func write(_ reply: RedisReply, into buffer: inout ByteBuffer) {
        switch reply {
        case .string(let bytes):
            buffer.writeString("$\(bytes.count)\r\n")
            buffer.writeBytes(bytes)
            buffer.writeString("\r\n")
        case .status(let text): buffer.writeString("+\(text)\r\n")
        case .error(let text): buffer.writeString("-\(text)\r\n")
        case .integer(let value): buffer.writeString(":\(value)\r\n")
        case .null: buffer.writeString("$-1\r\n")
        case .array(let items):
            buffer.writeString("*\(items.count)\r\n")
            for item in items { write(item, into: &buffer) }
        }
    }
}
