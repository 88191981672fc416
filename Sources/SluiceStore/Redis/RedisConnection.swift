import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// Why a Redis call failed.
public enum RedisError: Error, Equatable, CustomStringConvertible {
    /// No reply within the call's deadline.
    case timeout
    /// The connection closed, or could not be opened (the text says why).
    case unavailable(String)
    /// Redis answered with an error reply.
    case server(String)
    /// The bytes from Redis were not RESP.
    case protocolViolation(String)

    public var description: String {
        switch self {
        case .timeout: "Redis did not answer in time"
        case .unavailable(let reason): "Redis is unavailable: \(reason)"
        case .server(let message): "Redis error: \(message)"
        case .protocolViolation(let message): "Redis protocol error: \(message)"
        }
    }
}

/// Reads replies with the hiredis reader and completes the oldest waiting promise with each:
/// Redis answers pipelined commands in order. When the oldest command is overdue the
/// connection is presumed stuck: every waiting command fails and the connection closes.
final class RedisCommandHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private struct Waiting {
        let promise: EventLoopPromise<RedisReply>
        let deadline: NIODeadline
    }

    private let decoder = RedisReplyDecoder()
    private var waiting = CircularBuffer<Waiting>(initialCapacity: 64)
    private var context: ChannelHandlerContext?
    private var deadlineTimer: Scheduled<Void>?
    private var failure: RedisError?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    /// Writes commands in order and flushes once.
    func write(_ batch: [(bytes: ByteBuffer, promise: EventLoopPromise<RedisReply>, deadline: NIODeadline)]) {
        guard let context, failure == nil, context.channel.isActive else {
            let error = failure ?? .unavailable("connection closed")
            batch.forEach { $0.promise.fail(error) }
            return
        }
        for command in batch {
            waiting.append(Waiting(promise: command.promise, deadline: command.deadline))
            context.write(wrapOutboundOut(command.bytes), promise: nil)
        }
        context.flush()
        armDeadlineTimer(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        do {
            try buffer.withUnsafeReadableBytes { try decoder.feed($0) }
            while let reply = try decoder.next() {
                guard let next = waiting.popFirst() else {
                    throw RedisProtocolError(message: "a reply nobody asked for")
                }
                if case .error(let message) = reply {
                    next.promise.fail(RedisError.server(message))
                } else {
                    next.promise.succeed(reply)
                }
            }
        } catch let error as RedisProtocolError {
            failAll(.protocolViolation(error.message), context: context)
        } catch {
            failAll(.protocolViolation("\(error)"), context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(.unavailable("connection closed"), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(.unavailable("\(error)"), context: context)
    }

    private func armDeadlineTimer(_ context: ChannelHandlerContext) {
        guard deadlineTimer == nil, let first = waiting.first else { return }
        deadlineTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: first.deadline) { [self] in
            deadlineTimer = nil
            guard let oldest = waiting.first else { return }
            if oldest.deadline <= .now() {
                failAll(.timeout, context: context)
            } else {
                armDeadlineTimer(context)
            }
        }
    }

    private func failAll(_ error: RedisError, context: ChannelHandlerContext) {
        if failure == nil { failure = error }
        deadlineTimer?.cancel()
        deadlineTimer = nil
        while let next = waiting.popFirst() { next.promise.fail(error) }
        context.close(promise: nil)
    }
}

/// One connection to Redis. Commands from any thread are queued and written by one event-loop
/// task per batch with a single flush, so concurrent callers pipeline naturally.
final class RedisConnection: Sendable {
    let channel: any Channel
    private let handler: NIOLoopBound<RedisCommandHandler>
    private let outbox = Mutex<(commands: [(bytes: ByteBuffer, promise: EventLoopPromise<RedisReply>, deadline: NIODeadline)], drainScheduled: Bool)>(([], false))

    private init(channel: any Channel, handler: NIOLoopBound<RedisCommandHandler>) {
        self.channel = channel
        self.handler = handler
    }

    var isActive: Bool { channel.isActive }

    /// Opens a connection (TLS when `tls` is given).
    static func connect(
        host: String, port: Int, tls: NIOSSLContext?, connectTimeout: Duration, group: any EventLoopGroup
    ) async throws -> RedisConnection {
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(TimeAmount(connectTimeout))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: tls, serverHostname: (try? SocketAddress(ipAddress: host, port: 0)) == nil ? host : nil)
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(RedisCommandHandler())
                }
            }
            .connect(host: host, port: port)
            .get()
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: RedisCommandHandler.self), eventLoop: channel.eventLoop)
        }.get()
        return RedisConnection(channel: channel, handler: handler)
    }

    /// Sends one command; the reply (or `RedisError`) arrives by `deadline`.
    func send(_ command: [UInt8], deadline: NIODeadline) async throws -> RedisReply {
        let promise = channel.eventLoop.makePromise(of: RedisReply.self)
        let bytes = channel.allocator.buffer(bytes: command)
        let mustSchedule = outbox.withLock { outbox in
            outbox.commands.append((bytes, promise, deadline))
            if outbox.drainScheduled { return false }
            outbox.drainScheduled = true
            return true
        }
        if mustSchedule {
            let handler = handler
            channel.eventLoop.execute { [self] in
                let batch = outbox.withLock { outbox in
                    outbox.drainScheduled = false
                    defer { outbox.commands.removeAll(keepingCapacity: true) }
                    return outbox.commands
                }
                handler.value.write(batch)
            }
        }
        return try await promise.futureResult.get()
    }

    func close() async {
        try? await channel.close()
    }
}
