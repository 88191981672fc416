import NIOCore
import NIOPosix
import NIOSSL
import SluiceCore

/// Why a Redis call failed.
public enum RedisError: Error, Equatable, CustomStringConvertible {
    /// No reply within the call's deadline (the command may have been applied).
    case timeout
    /// Nothing was sent: no connection could be opened, or the client is backing off or shut
    /// down (the text says why).
    case unavailable(String)
    /// The connection broke while the command was on its way or being answered (it may have been applied).
    case connectionLost(String)
    /// Redis answered with an error reply.
    case server(String)
    /// `durability: replicated`: the primary applied the write but no replica confirmed it
    /// within `replica_timeout` (a failover now could lose it).
    case notReplicated
    /// The bytes from Redis were not RESP.
    case protocolViolation(String)

    public var description: String {
        switch self {
        case .timeout: "Redis did not answer in time"
        case .unavailable(let reason): "Redis is unavailable: \(reason)"
        case .connectionLost(let reason): "the Redis connection was lost: \(reason)"
        case .server(let message): "Redis error: \(message)"
        case .notReplicated: "no Redis replica confirmed the write in time"
        case .protocolViolation(let message): "Redis protocol error: \(message)"
        }
    }

    /// Whether the command may have been applied although the call failed (a timeout, a lost
    /// connection, an unreadable reply): a write that must not happen twice is settled before
    /// it is retried. Nothing sent, or an error reply, applied nothing.
    public var mayHaveBeenApplied: Bool {
        switch self {
        case .timeout, .connectionLost, .protocolViolation, .notReplicated: true
        case .unavailable, .server: false
        }
    }
}

/// Reads replies with the hiredis reader and completes the oldest waiting promise with each:
/// Redis answers pipelined commands in order. When the oldest command is overdue the
/// connection is presumed stuck: every waiting command fails and the connection closes.
/// Commands written in one event-loop tick go out with one flush.
final class RedisCommandHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private struct Waiting {
        let promise: EventLoopPromise<RedisReply>
        let deadline: NIODeadline
    }

    private let decoder = RedisReplyDecoder()
    /// Replies nobody asked for go here on a subscribed connection (pub/sub messages); without
    /// it they are a protocol violation.
    private let onPush: (@Sendable (RedisReply) -> Void)?
    /// Told of every `READONLY` answer: the Redis was demoted to a replica.
    private let onReadOnly: (@Sendable () -> Void)?
    private var waiting = CircularBuffer<Waiting>(initialCapacity: 64)
    private var context: ChannelHandlerContext?
    private var deadlineTimer: Scheduled<Void>?
    private var failure: RedisError?
    /// The commands of this event-loop tick, written and flushed together at its end.
    private var outbound: ByteBuffer?

    init(onPush: (@Sendable (RedisReply) -> Void)? = nil, onReadOnly: (@Sendable () -> Void)? = nil) {
        self.onPush = onPush
        self.onReadOnly = onReadOnly
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    /// Queues a command; the tick's commands go out in one write at its end.
    func write(_ arguments: [String], deadline: NIODeadline, promise: EventLoopPromise<RedisReply>) {
        guard let context, failure == nil, context.channel.isActive else {
            // Not sent: nothing of it can have been applied, whatever ended the connection.
            promise.fail(RedisError.unavailable(failure.map { "connection closed (\($0))" } ?? "connection closed"))
            return
        }
        waiting.append(Waiting(promise: promise, deadline: deadline))
        if outbound == nil {
            outbound = context.channel.allocator.buffer(capacity: 512)
            context.eventLoop.assumeIsolated().execute { [self] in
                guard let commands = outbound, let context = self.context else { return }
                outbound = nil
                context.writeAndFlush(wrapOutboundOut(commands), promise: nil)
            }
        }
        RedisCommandEncoder.write(arguments, into: &outbound!)
        armDeadlineTimer(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        do {
            try buffer.withUnsafeReadableBytes { try decoder.feed($0) }
            while let reply = try decoder.next() {
                guard let next = waiting.popFirst() else {
                    guard let onPush else { throw RedisProtocolError(message: "a reply nobody asked for") }
                    onPush(reply)
                    continue
                }
                if case .error(let message) = reply {
                    if message.hasPrefix("READONLY") { onReadOnly?() }
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
        failAll(.connectionLost("connection closed"), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(.connectionLost("\(error)"), context: context)
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

/// One connection to Redis, bound to its event loop: commands are sent from that loop.
final class RedisConnection: Sendable {
    let channel: any Channel
    private let handler: NIOLoopBound<RedisCommandHandler>

    private init(channel: any Channel, handler: NIOLoopBound<RedisCommandHandler>) {
        self.channel = channel
        self.handler = handler
    }

    var isActive: Bool { channel.isActive }

    /// Opens a connection on `eventLoop` (TLS when `tls` is given); `onPush` takes the
    /// messages of a subscription, `onReadOnly` hears of `READONLY` answers.
    static func connect(
        host: String, port: Int, tls: NIOSSLContext?, connectTimeout: Duration, on eventLoop: any EventLoop,
        onPush: (@Sendable (RedisReply) -> Void)? = nil, onReadOnly: (@Sendable () -> Void)? = nil
    ) -> EventLoopFuture<RedisConnection> {
        ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(connectTimeout))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: tls, serverHostname: (try? SocketAddress(ipAddress: host, port: 0)) == nil ? host : nil)
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(RedisCommandHandler(onPush: onPush, onReadOnly: onReadOnly))
                }
            }
            .connect(host: host, port: port)
            .flatMapThrowing { channel in
                let handler = try channel.pipeline.syncOperations.handler(type: RedisCommandHandler.self)
                return RedisConnection(channel: channel, handler: NIOLoopBound(handler, eventLoop: channel.eventLoop))
            }
    }

    /// Sends one command; the reply (or `RedisError`) arrives by `deadline`. On the connection's event loop.
    func send(_ arguments: [String], deadline: NIODeadline) -> EventLoopFuture<RedisReply> {
        let promise = channel.eventLoop.makePromise(of: RedisReply.self)
        handler.value.write(arguments, deadline: deadline, promise: promise)
        return promise.futureResult
    }

    /// One command on a short-lived connection to `endpoint` (after `auth`, when given), closed
    /// once answered: for asking a sentinel or a cluster node, off the pooled connections.
    static func oneShot(
        _ arguments: [String], at endpoint: RedisURL.Endpoint, tls: NIOSSLContext?, auth: [String]?, timeout: Duration, on eventLoop: any EventLoop
    ) -> EventLoopFuture<RedisReply> {
        connect(host: endpoint.host, port: endpoint.port, tls: tls, connectTimeout: timeout, on: eventLoop).flatMap { connection in
            let deadline = NIODeadline.now() + TimeAmount(timeout)
            let authenticated = auth.map { connection.send($0, deadline: deadline).map { _ in } } ?? eventLoop.makeSucceededVoidFuture()
            return authenticated.flatMap { connection.send(arguments, deadline: deadline) }.always { _ in connection.channel.close(promise: nil) }
        }
    }

    func close() async {
        try? await channel.close()
    }
}
