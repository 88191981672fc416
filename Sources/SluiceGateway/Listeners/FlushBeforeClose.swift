import NIOCore

/// Placed right after the HTTP/2 handler: when the connection is closed from above (as
/// Hummingbird's HTTP/2 connection manager does the moment the last stream of a draining
/// connection closes, while that stream's final frames are still being written), the close is
/// deferred by one event-loop tick and preceded by a flush, so the last response is not lost.
final class FlushBeforeClose: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = NIOAny

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        context.eventLoop.assumeIsolated().execute {
            context.flush()
            context.close(mode: mode, promise: promise)
        }
    }
}
