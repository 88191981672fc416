import HummingbirdCore
import HummingbirdHTTP2
import Logging
import NIOCore
import NIOHTTP2
import NIOSSL
import SluiceCore

/// The child channel of a partner listener: optional TLS with ALPN (`h2`, `http/1.1`), then
/// Hummingbird's HTTP/1.1 or HTTP/2 handling, with a `ConnectionWatchdog` in front and a
/// `RequestGuard` per request stream. Limits and the TLS context come from the policy snapshot
/// current when the connection is accepted, so reloads apply to new connections.
struct PartnerChannel: ServerChildChannel {
    struct Value: ServerChildChannelValue {
        let negotiated: EventLoopFuture<NIONegotiatedHTTPVersion<HTTP1Channel.Value, HTTP2Channel.Value>>
        let channel: any Channel
        /// For HTTP/1.1 requests on this connection (an HTTP/2 stream has a channel of its own).
        let disconnect: DisconnectSignal
    }

    /// Serves one request; `disconnect` is the connection's signal for HTTP/1.1 and nil for an
    /// HTTP/2 stream, whose own channel closes when the client resets it.
    typealias Responder = @Sendable (Request, consuming ResponseWriter, any Channel, DisconnectSignal?) async throws -> Void

    let useTLS: Bool
    let snapshots: SnapshotHolder<GatewaySnapshot>
    let identifiers: IdentifierGenerator
    let onProtocolError: RequestGuard.ProtocolErrorObserver
    let responder: Responder

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let snapshot = snapshots.load()
        let limits = snapshot.policy.gateway.limits
        do {
            let watchdog = ConnectionWatchdog(headerTimeout: limits.clientHeaderTimeout, idleTimeout: limits.idleTimeout)
            try channel.pipeline.syncOperations.addHandler(watchdog)
            watchdog.httpIsNegotiated()  // Hummingbird drains connections itself
            let boundWatchdog = NIOLoopBound(watchdog, eventLoop: channel.eventLoop)
            let disconnect = DisconnectSignal(closeFuture: channel.closeFuture)
            let http1 = HTTP1Channel(responder: http1Responder(disconnect), configuration: streamConfiguration(limits, boundWatchdog, disconnect))
            guard useTLS else {
                return http1.setup(channel: channel, logger: logger).map { connection in
                    Value(negotiated: channel.eventLoop.makeSucceededFuture(.http1_1(connection)), channel: channel, disconnect: disconnect)
                }
            }
            guard let tlsContext = snapshot.tlsContext else {
                return channel.eventLoop.makeFailedFuture(ChannelError.inappropriateOperationForState)
            }
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tlsContext))
            let http2 = HTTP2Channel(
                responder: http2Responder,
                configuration: .init(streamConfiguration: streamConfiguration(limits, boundWatchdog, nil))
            )
            return channel.configureHTTP2AsyncSecureUpgrade { connection in
                http1.setup(channel: connection, logger: logger)
            } http2ConnectionInitializer: { connection in
                boundWatchdog.value.connectionIsMultiplexed()
                return http2.setup(channel: connection, logger: logger).flatMapThrowing { value in
                    let operations = connection.pipeline.syncOperations
                    try operations.addHandler(FlushBeforeClose(), position: .after(try operations.handler(type: NIOHTTP2Handler.self)))
                    return value
                }
            }
            .map { Value(negotiated: $0, channel: channel, disconnect: disconnect) }
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.negotiated.get() {
            case .http1_1(let connection):
                await HTTP1Channel(responder: http1Responder(value.disconnect)).handle(value: connection, logger: logger)
            case .http2(let connection):
                await HTTP2Channel(responder: http2Responder).handle(value: connection, logger: logger)
            }
        } catch {
            logger.debug("connection ended before HTTP was negotiated", metadata: ["error": "\(error)"])
        }
    }

    private func http1Responder(_ disconnect: DisconnectSignal) -> HTTPChannelHandler.Responder {
        let responder = responder
        return { request, writer, channel in try await responder(request, writer, channel, disconnect) }
    }

    private var http2Responder: HTTPChannelHandler.Responder {
        let responder = responder
        return { request, writer, channel in try await responder(request, writer, channel, nil) }
    }

    /// Decoder limits from `max_header_bytes` and a `RequestGuard` on every HTTP/1.1 connection
    /// (with its disconnect signal) or HTTP/2 stream (without).
    private func streamConfiguration(
        _ limits: GatewayPolicy.Limits, _ watchdog: NIOLoopBound<ConnectionWatchdog>, _ disconnect: DisconnectSignal?
    ) -> HTTP1Channel.Configuration {
        let identifiers = identifiers
        let onProtocolError = onProtocolError
        return HTTP1Channel.Configuration(
            additionalChannelHandlers: [
                RequestGuard(watchdog: watchdog.value, disconnect: disconnect, identifiers: identifiers, onProtocolError: onProtocolError)
            ],
            idleTimeout: nil,
            httpDecoderConfiguration: .init(
                maxHeaderFieldSize: limits.maxHeaderBytes, maxHeaderListSize: limits.maxHeaderBytes, maxHeaderFieldCount: 1_000
            )
        )
    }
}
