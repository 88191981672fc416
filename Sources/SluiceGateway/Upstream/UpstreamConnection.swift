import NIOCore
import NIOHTTP1

/// Whoever uses an upstream connection for a request hears from it through this; all calls
/// come on the connection's event loop.
protocol UpstreamConnectionUser: AnyObject {
    func connection(_ connection: UpstreamConnection, received part: HTTPClientResponsePart)
    /// The connection closed (by the upstream, an error, or a timeout that closed it).
    func connectionClosed(_ connection: UpstreamConnection)
    /// The connection's timer went off (see `UpstreamConnection.timer`).
    func connectionTimerFired(_ connection: UpstreamConnection)
}

/// One HTTP/1.1 connection to an upstream, bound to its event loop: either idle in its pool or
/// used by one request at a time.
final class UpstreamConnection {
    let channel: any Channel
    fileprivate let handler: UpstreamConnectionHandler
    /// Requests this connection has carried (more than zero means it was taken from the pool).
    var requestsServed = 0
    /// When it last went back to the pool.
    var idleSince = NIODeadline.now()
    /// Set when the upstream said `Connection: close` or a request was abandoned mid-way.
    var isReusable = true
    /// Wakes the connection's user for its deadlines; lives as long as the connection, so
    /// requests one after another reuse one scheduled timer.
    private(set) var timer: LazyTimer!

    init(channel: any Channel, handler: UpstreamConnectionHandler) {
        self.channel = channel
        self.handler = handler
        handler.connection = self
        timer = LazyTimer(eventLoop: channel.eventLoop) { [unowned self] in
            user?.connectionTimerFired(self)
        }
    }

    var isOpen: Bool { channel.isActive }

    /// Directs events to `user` (nil while idle).
    var user: (any UpstreamConnectionUser)? {
        get { handler.user }
        set { handler.user = newValue }
    }

    /// Called by the pool when the connection closes while idle.
    var onClosedWhileIdle: (() -> Void)? {
        get { handler.onClosedWhileIdle }
        set { handler.onClosedWhileIdle = newValue }
    }

    func write(_ part: HTTPClientRequestPart, promise: EventLoopPromise<Void>?) {
        handler.write(part, promise: promise)
    }

    func flush() {
        handler.flush()
    }

    /// Stops or resumes reading the response (when the partner cannot take more of it yet).
    func pauseReading(_ paused: Bool) {
        handler.pauseReading(paused)
    }

    func close() {
        isReusable = false
        channel.close(promise: nil)
    }
}

/// The last handler of an upstream connection's pipeline (after TLS and the HTTP/1.1 codec):
/// hands response parts to the connection's user, notes responses that end the connection, and
/// holds reads while the partner's side is full.
final class UpstreamConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    /// Strong (a weak reference would cost a side table per call); every call clears it when
    /// it leaves the connection.
    fileprivate var user: (any UpstreamConnectionUser)?
    fileprivate weak var connection: UpstreamConnection?
    fileprivate var onClosedWhileIdle: (() -> Void)?
    private var context: ChannelHandlerContext?
    private var readsPaused = false
    private var readPending = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let connection, let user else { return }
        let part = unwrapInboundIn(data)
        if case .head(let head) = part, !head.isKeepAlive { connection.isReusable = false }
        user.connection(connection, received: part)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let connection {
            connection.isReusable = false
            connection.timer.cancel()
            if let user {
                user.connectionClosed(connection)
            } else {
                onClosedWhileIdle?()
            }
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Any error (reset, TLS, malformed response) ends the connection; the user learns of it
        // from channelInactive.
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) {
        if readsPaused {
            readPending = true
        } else {
            context.read()
        }
    }

    fileprivate func write(_ part: HTTPClientRequestPart, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        context.write(wrapOutboundOut(part), promise: promise)
    }

    fileprivate func flush() {
        context?.flush()
    }

    fileprivate func pauseReading(_ paused: Bool) {
        readsPaused = paused
        if !paused, readPending, let context {
            readPending = false
            context.read()
        }
    }
}
