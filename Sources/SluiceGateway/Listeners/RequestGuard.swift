import HTTPTypes
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import SluiceCore

/// Sits after HTTP decoding on an HTTP/1.1 connection or an HTTP/2 stream:
///
/// - answers malformed requests with a 400 problem, and oversized headers with 431, then closes;
/// - marks HTTP/1.1 requests without body framing as `Content-Length: 0`;
/// - closes an HTTP/1.1 connection after a response that says `Connection: close` (the gateway
///   does that when it answered without reading the whole request body), and removes that
///   header on HTTP/2, where it is not allowed; there the stream is reset instead when the
///   request body is still coming;
/// - reports request and response boundaries to the connection's `ConnectionWatchdog`, and a
///   client that stops sending while its request is in progress to the `DisconnectSignal`.
final class RequestGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// Called with the status and request id of a protocol error answered here.
    typealias ProtocolErrorObserver = @Sendable (_ status: Int, _ requestID: String) -> Void

    private let watchdog: ConnectionWatchdog
    private let isHTTP2: Bool
    /// The HTTP/1.1 connection's signal; nil on an HTTP/2 stream.
    private let disconnect: DisconnectSignal?
    private let identifiers: IdentifierGenerator
    private let onProtocolError: ProtocolErrorObserver
    private var requestsInProgress = 0
    private var bodyInProgress = false
    private var responseInProgress = false
    private var closeAfterResponse = false
    private var closing = false

    init(
        watchdog: ConnectionWatchdog, disconnect: DisconnectSignal?, identifiers: IdentifierGenerator,
        onProtocolError: @escaping ProtocolErrorObserver
    ) {
        self.watchdog = watchdog
        self.isHTTP2 = disconnect == nil
        self.disconnect = disconnect
        self.identifiers = identifiers
        self.onProtocolError = onProtocolError
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(var head):
            requestsInProgress += 1
            bodyInProgress = true
            watchdog.requestHeadReceived()
            // An HTTP/1.1 request without Content-Length or Transfer-Encoding has no body; say so
            // explicitly, as HTTP/2 requests may carry a body without either.
            if !isHTTP2 && head.headerFields[.contentLength] == nil && head.headerFields[.transferEncoding] == nil {
                head.headerFields[.contentLength] = "0"
                context.fireChannelRead(wrapInboundOut(.head(head)))
                return
            }
        case .body:
            break
        case .end:
            bodyInProgress = false
            watchdog.requestBodyEnded()
        }
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event, requestsInProgress > 0 {
            disconnect?.clientWentAway()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Only a malformed new request gets an answer; errors while a body is in flight reach
        // the responder, and an unfinished message at end of input has nobody left to answer.
        guard !isHTTP2, !closing, let parserError = error as? HTTPParserError, requestsInProgress == 0, !responseInProgress,
            !bodyInProgress
        else {
            bodyInProgress = false
            context.fireErrorCaught(error)
            return
        }
        if case .invalidEOFState = parserError {
            context.close(promise: nil)
            return
        }
        closing = true
        let problem: Problem
        if case .headerOverflow = parserError {
            problem = Problem(
                .invalidRequest, detail: "The request line and headers are larger than the gateway accepts.",
                status: 431, title: "Request header fields too large"
            )
        } else {
            problem = Problem(.invalidRequest, detail: "The request is not valid HTTP/1.1.")
        }
        let requestID = identifiers.requestID()
        let body = context.channel.allocator.buffer(string: problem.json(instance: nil, requestID: requestID))
        var head = HTTPResponse(status: .init(code: problem.status))
        head.headerFields = [
            .contentType: Problem.contentType, .contentLength: String(body.readableBytes), .connection: "close",
            .init("X-Request-Id")!: requestID,
        ]
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        onProtocolError(problem.status, requestID)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head) where head.status.kind != .informational:
            responseInProgress = true
            if head.headerFields[.connection]?.lowercased() == "close" {
                if isHTTP2 {
                    head.headerFields[.connection] = nil
                    context.write(wrapOutboundOut(.head(head)), promise: promise)
                    return
                }
                closeAfterResponse = true
            }
            context.write(data, promise: promise)
        case .end:
            responseInProgress = false
            requestsInProgress = max(0, requestsInProgress - 1)
            watchdog.responseEnded()
            // HTTP/1.1: the response said Connection: close. HTTP/2: the response is complete but
            // the request body is not; resetting the stream tells the client to stop sending
            // (RFC 9113 §8.1) without touching the connection's other streams.
            if closeAfterResponse || (isHTTP2 && bodyInProgress) {
                closing = true
                context.writeAndFlush(data).assumeIsolated().whenComplete { result in
                    promise?.completeWith(result)
                    context.close(promise: nil)
                }
            } else {
                context.write(data, promise: promise)
            }
        default:
            context.write(data, promise: promise)
        }
    }
}
