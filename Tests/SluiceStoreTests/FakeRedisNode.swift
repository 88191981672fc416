import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
@testable import SluiceStore

/// A Redis stand-in on loopback for what a real server will not do on cue — a Redis 6 cluster
/// node, a sentinel with a stale view: it answers each command it was given with its fixed
/// reply, any other with an error, and records what it was asked.
final class FakeRedisNode: Sendable {
    let port: Int
    private let asked: NIOLockedValueBox<[[String]]>
    private let channel: any Channel

    private init(port: Int, asked: NIOLockedValueBox<[[String]]>, channel: any Channel) {
        self.port = port
        self.asked = asked
        self.channel = channel
    }

    static func start(answering answers: [[String]: RedisReply]) async throws -> FakeRedisNode {
        let asked = NIOLockedValueBox<[[String]]>([])
        let known = answers.map { command, reply in (encoded: FakeNodeHandler.encoded(command), command: command, reply: reply) }
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(FakeNodeHandler(known: known, asked: asked)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return FakeRedisNode(port: channel.localAddress!.port!, asked: asked, channel: channel)
    }

    /// The commands it answered, in order.
    var commands: [[String]] { asked.withLockedValue { $0 } }

    func stop() async throws { try await channel.close() }
}

private final class FakeNodeHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let known: [(encoded: [UInt8], command: [String], reply: RedisReply)]
    private let asked: NIOLockedValueBox<[[String]]>
    private var received: [UInt8] = []

    init(known: [(encoded: [UInt8], command: [String], reply: RedisReply)], asked: NIOLockedValueBox<[[String]]>) {
        self.known = known
        self.asked = asked
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += Array(buffer: unwrapInboundIn(data))
        if let match = known.first(where: { $0.encoded == received }) {
            asked.withLockedValue { $0.append(match.command) }
            answer(match.reply, context: context)
        } else if known.contains(where: { $0.encoded.starts(with: received) }) {
            return  // more of the command is on its way
        } else {
            answer(.error("ERR unknown command"), context: context)
        }
        received = []
    }

    private func answer(_ reply: RedisReply, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 1024)
        Self.write(reply, into: &buffer)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    static func encoded(_ command: [String]) -> [UInt8] {
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
