import NIOCore
import SluiceCore

/// First handler of every partner connection: sees each read (before TLS) and closes the
/// connection when `ConnectionTimeouts` says it is too slow or idle. The request handlers tell
/// it when heads, bodies and responses start and end. A connection asked to quiesce (drain)
/// before its HTTP handlers exist (still in the TLS handshake) is closed here; later, the
/// HTTP handlers drain it.
final class ConnectionWatchdog: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private var timeouts: ConnectionTimeouts<ContinuousClock.Instant>
    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    private var started = false
    private var negotiated = false

    init(headerTimeout: Duration, idleTimeout: Duration) {
        timeouts = ConnectionTimeouts(headerTimeout: headerTimeout, idleTimeout: idleTimeout, now: .now)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { start() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        start()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        perform(timeouts.bytesReceived(now: .now))
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent, !negotiated {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// The HTTP/1.1 or HTTP/2 handlers are in place.
    func httpIsNegotiated() { negotiated = true }
    func connectionIsMultiplexed() { timeouts.connectionIsMultiplexed() }
    func requestHeadReceived() { perform(timeouts.requestHeadReceived(now: .now)) }
    func requestBodyEnded() { perform(timeouts.requestBodyEnded(now: .now)) }
    func bodyReadsHeld() { perform(timeouts.bodyReadsHeld(now: .now)) }
    func bodyReadsResumed() { perform(timeouts.bodyReadsResumed(now: .now)) }
    func responseEnded() { perform(timeouts.responseEnded(now: .now)) }

    private func start() {
        guard !started else { return }
        started = true
        perform(timeouts.start())
    }

    private func perform(_ action: ConnectionTimeouts<ContinuousClock.Instant>.Action) {
        guard let context else { return }
        switch action {
        case .none:
            break
        case .arm(let deadline):
            timer?.cancel()
            timer = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(deadline - .now)) { [self] in
                timer = nil
                perform(timeouts.timerFired(now: .now))
            }
        case .close:
            context.close(promise: nil)
        }
    }
}
