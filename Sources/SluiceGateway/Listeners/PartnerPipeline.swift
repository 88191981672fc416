import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOSSL
import NIOTLS
import SluiceCore

/// Builds the channel pipeline of one partner connection, from the policy snapshot current at
/// accept: `ConnectionWatchdog` (header and idle timeouts, before anything else), then for the
/// HTTPS listener NIOSSL with ALPN (`h2`, `http/1.1`), then
///
/// - HTTP/1.1: NIO's server codec (without its pipelining handler: `PartnerRequestHandler`
///   queues pipelined requests itself and answers a drain with `Connection: close`), then a
///   `PartnerRequestHandler`;
/// - HTTP/2: NIO's HTTP/2 handler with an inline stream multiplexer and its server connection
///   management (GOAWAY on drain); every stream gets NIO's HTTP/2-to-HTTP/1 codec and a
///   `PartnerRequestHandler` of its own. Inbound RST_STREAM floods (CVE-2023-44487 rapid
///   reset) and other stream-error storms close the connection (`NIOHTTP2Handler`'s limits).
enum PartnerPipeline {
    /// Concurrent streams an HTTP/2 client may open on one connection.
    static let maxConcurrentStreams = 100
    /// RST_STREAM frames a client may send per `resetWindow` before the connection is closed.
    static let maxResetsPerWindow = 200
    static let resetWindow: TimeAmount = .seconds(30)

    static func configure(_ channel: any Channel, useTLS: Bool, runtime: GatewayRuntime) throws {
        let snapshot = runtime.snapshots.load()
        let limits = snapshot.policy.gateway.limits
        let operations = channel.pipeline.syncOperations
        let watchdog = ConnectionWatchdog(headerTimeout: limits.clientHeaderTimeout, idleTimeout: limits.idleTimeout)
        try operations.addHandler(watchdog)
        let connection = PartnerConnection(channel: channel, scheme: useTLS ? "https" : "http", watchdog: watchdog)
        guard useTLS else { return try configureHTTP1(channel, connection, limits, runtime) }
        guard let tlsContext = snapshot.tlsContext else { throw ChannelError.inappropriateOperationForState }
        try operations.addHandler(NIOSSLServerHandler(context: tlsContext))
        let bound = NIOLoopBound(connection, eventLoop: channel.eventLoop)
        try operations.addHandler(
            ApplicationProtocolNegotiationHandler { result, channel in
                channel.eventLoop.makeCompletedFuture {
                    switch result {
                    case .negotiated("h2"): try configureHTTP2(channel, bound.value, limits, runtime)
                    default: try configureHTTP1(channel, bound.value, limits, runtime)
                    }
                }
            }
        )
    }

    private static func configureHTTP1(_ channel: any Channel, _ connection: PartnerConnection, _ limits: GatewayPolicy.Limits, _ runtime: GatewayRuntime) throws {
        var decoderLimits = NIOHTTPDecoderLimitConfiguration()
        decoderLimits.maxHeaderFieldSize = limits.maxHeaderBytes
        decoderLimits.maxHeaderListSize = limits.maxHeaderBytes
        decoderLimits.maxHeaderFieldCount = 1_000
        let operations = channel.pipeline.syncOperations
        try operations.configureHTTPServerPipeline(
            withPipeliningAssistance: false, withErrorHandling: false, withOutboundHeaderValidation: false,
            withEncoderConfiguration: .init(), withDecoderLimitConfiguration: decoderLimits
        )
        try operations.addHandler(PartnerRequestHandler(connection: connection, runtime: runtime, isHTTP2: false, eventLoop: channel.eventLoop))
        connection.watchdog.httpIsNegotiated()
    }

    private static func configureHTTP2(_ channel: any Channel, _ connection: PartnerConnection, _ limits: GatewayPolicy.Limits, _ runtime: GatewayRuntime) throws {
        connection.watchdog.connectionIsMultiplexed()
        let management = NIOHTTP2ServerConnectionManagementHandler(
            eventLoop: channel.eventLoop, configuration: .init(maxIdleTime: nil, maxAge: nil, maxGraceTime: nil, keepalive: nil)
        )
        var connectionConfiguration = NIOHTTP2Handler.ConnectionConfiguration()
        connectionConfiguration.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: maxConcurrentStreams),
            // HPACK counts 32 bytes per field on top of name and value.
            HTTP2Setting(parameter: .maxHeaderListSize, value: max(16_384, limits.maxHeaderBytes + 32 * 100)),
        ]
        var streamConfiguration = NIOHTTP2Handler.StreamConfiguration()
        streamConfiguration.streamResetFrameRateLimit.maximumCount = maxResetsPerWindow
        streamConfiguration.streamResetFrameRateLimit.windowLength = resetWindow
        let bound = NIOLoopBound(connection, eventLoop: channel.eventLoop)
        let operations = channel.pipeline.syncOperations
        try operations.addHandler(FlushCoalescer())
        _ = try operations.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: connectionConfiguration, streamConfiguration: streamConfiguration,
            streamDelegate: management.http2StreamDelegate
        ) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                try stream.pipeline.syncOperations.addHandler(
                    PartnerRequestHandler(connection: bound.value, runtime: runtime, isHTTP2: true, eventLoop: stream.eventLoop)
                )
            }
        }
        try operations.addHandler(management)
        try operations.addHandler(CloseOnError())
        connection.watchdog.httpIsNegotiated()
    }
}

/// Between TLS and the HTTP/2 handler: the flushes of one event-loop tick go out as one.
/// Each stream flushes its own response, and responses mostly arrive from the upstream
/// connections' reads, outside this connection's read loop (where NIO's multiplexer coalesces
/// by itself); so a connection answering ten streams at once now encrypts and writes once,
/// not ten times.
private final class FlushCoalescer: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = NIOAny

    private var flushScheduled = false

    func flush(context: ChannelHandlerContext) {
        guard !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute { [self] in
            guard flushScheduled else { return }
            flushScheduled = false
            context.flush()
        }
    }

    /// What is written goes out before the connection closes (a drained connection closes the
    /// moment its last stream ends, in the same tick as that stream's response).
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if flushScheduled {
            flushScheduled = false
            context.flush()
        }
        context.close(mode: mode, promise: promise)
    }
}

/// Last handler of an HTTP/2 connection: a connection error (protocol violation, a reset or
/// glitch flood, TLS failure) has been answered with GOAWAY by the HTTP/2 handler; the
/// connection closes.
private final class CloseOnError: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
