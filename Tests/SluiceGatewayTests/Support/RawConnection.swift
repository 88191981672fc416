import NIOCore
import NIOPosix
import Synchronization

/// A plain TCP connection for sending hand-made (slow, malformed, cut-off) HTTP/1.1.
final class RawConnection: Sendable {
    private let channel: any Channel
    private let received: AsyncStream<ByteBuffer>
    private let answered: Answered

    private final class Answered: Sendable {
        let flag = Atomic<Bool>(false)
    }

    /// Whether the server has sent anything yet.
    var hasAnswered: Bool { answered.flag.load(ordering: .relaxed) }

    /// Passes what the server sends into an async stream, which ends when the connection closes.
    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let continuation: AsyncStream<ByteBuffer>.Continuation
        let answered: Answered

        init(_ continuation: AsyncStream<ByteBuffer>.Continuation, _ answered: Answered) {
            self.continuation = continuation
            self.answered = answered
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            answered.flag.store(true, ordering: .relaxed)
            continuation.yield(unwrapInboundIn(data))
        }

        func channelInactive(context: ChannelHandlerContext) {
            continuation.finish()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }

    private init(channel: any Channel, received: AsyncStream<ByteBuffer>, answered: Answered) {
        self.channel = channel
        self.received = received
        self.answered = answered
    }

    static func open(port: Int) async throws -> RawConnection {
        let (stream, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
        let answered = Answered()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Collector(continuation, answered)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return RawConnection(channel: channel, received: stream, answered: answered)
    }

    func send(_ text: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: text))
    }

    func close() async {
        try? await channel.close()
    }

    /// Everything the server sends until it closes the connection; `closed` is false when
    /// `timeout` passed first (the connection is then closed here).
    func readUntilClosed(timeout: Duration) async throws -> (text: String, closed: Bool) {
        let received = received
        let result = await withTaskGroup(of: (String, Bool).self) { group in
            group.addTask {
                var text = ""
                for await buffer in received { text += String(buffer: buffer) }
                return (text, true)
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return ("", false)
            }
            let first = await group.next()!
            group.cancelAll()
            return first
        }
        if !result.1 { await close() }
        return result
    }

    /// Reads until `marker` appears in what the server sent.
    func read(until marker: String, timeout: Duration = .seconds(5)) async throws -> String {
        var text = ""
        var iterator = received.makeAsyncIterator()
        let deadline = ContinuousClock.now + timeout
        while !text.contains(marker), ContinuousClock.now < deadline {
            guard let buffer = await iterator.next() else { break }
            text += String(buffer: buffer)
        }
        return text
    }
}
