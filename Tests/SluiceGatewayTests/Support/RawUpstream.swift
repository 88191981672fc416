import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// A hand-written HTTP/1.1 upstream for back-pressure tests, counting what it hands to the
/// kernel and what it reads:
///
/// - `.streaming(bytes:)` answers any request with that many bytes, written only while its
///   connection is writable, and says when it is stalled (the gateway stopped reading);
/// - `.slowReader(pauseAfter:)` stops reading a request body after that many bytes until
///   `release()`, then reads the rest and answers 200.
final class RawUpstream: Sendable {
    enum Mode: Sendable {
        case streaming(bytes: Int)
        case slowReader(pauseAfter: Int)
    }

    let mode: Mode
    private let response = TransferMeter()
    private let receivedBytes = Atomic<Int>(0)
    private let releasedFlag = Atomic<Bool>(false)
    private let channels = Mutex<[any Channel]>([])
    private let server: any Channel

    /// Response bytes written to the socket so far.
    var sent: Int { response.sent }
    /// Request bytes (head and body) read so far.
    var received: Int { receivedBytes.load(ordering: .relaxed) }
    /// Streaming: the response is not all written, and writing has waited for the connection to
    /// become writable, without progress, for half a second.
    var isStalled: Bool { response.isStalled }
    var port: Int { server.localAddress!.port! }

    private init(mode: Mode, server: any Channel) {
        self.mode = mode
        self.server = server
    }

    static func start(_ mode: Mode) async throws -> RawUpstream {
        let box = Mutex<RawUpstream?>(nil)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelOption(.autoRead, value: false)
            // A small, fixed receive buffer: what the kernel holds for a slow reader stays small.
            .childChannelOption(.socketOption(.so_rcvbuf), value: 64 << 10)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard let upstream = box.withLock({ $0 }) else { throw ChannelError.inappropriateOperationForState }
                    upstream.channels.withLock { $0.append(channel) }
                    try channel.pipeline.syncOperations.addHandler(Handler(upstream))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let upstream = RawUpstream(mode: mode, server: server)
        box.withLock { $0 = upstream }
        return upstream
    }

    /// A slow reader reads on.
    func release() {
        releasedFlag.store(true, ordering: .relaxed)
        for channel in channels.withLock({ $0 }) { channel.read() }
    }

    func stop() async {
        for channel in channels.withLock({ $0 }) { try? await channel.close() }
        try? await server.close()
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        private let upstream: RawUpstream
        private var head: [UInt8] = []
        private var bodyExpected: Int?
        private var bodyReceived = 0
        private var answered = false

        init(_ upstream: RawUpstream) {
            self.upstream = upstream
        }

        func channelActive(context: ChannelHandlerContext) {
            context.read()
            context.fireChannelActive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            upstream.receivedBytes.add(buffer.readableBytes, ordering: .relaxed)
            if bodyExpected == nil {
                head += buffer.readBytes(length: buffer.readableBytes) ?? []
                guard let end = Self.endOfHead(head) else { return }
                let text = String(decoding: head[..<end], as: UTF8.self).lowercased()
                bodyExpected = text.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
                bodyReceived = head.count - (end + 4)
            } else {
                bodyReceived += buffer.readableBytes
            }
            if bodyReceived >= bodyExpected! { answer(context) }
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            if case .slowReader(let pauseAfter) = upstream.mode, bodyReceived >= pauseAfter, !upstream.releasedFlag.load(ordering: .relaxed) {
                return  // stop reading until released
            }
            context.read()
        }

        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if context.channel.isWritable { upstream.response.writeWhileWritable(context) }
        }

        private func answer(_ context: ChannelHandlerContext) {
            guard !answered else { return }
            answered = true
            switch upstream.mode {
            case .slowReader:
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")), promise: nil)
            case .streaming(let bytes):
                context.write(wrapOutboundOut(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: \(bytes)\r\n\r\n")), promise: nil)
                upstream.response.start(bytes, context)
            }
        }

        private static func endOfHead(_ bytes: [UInt8]) -> Int? {
            guard bytes.count >= 4 else { return nil }
            for index in 0...(bytes.count - 4) where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
                return index
            }
            return nil
        }
    }
}
