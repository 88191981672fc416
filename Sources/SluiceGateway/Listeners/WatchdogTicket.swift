import NIOCore
import SluiceCore

/// What one request told its connection's `ConnectionWatchdog`, so that however the request
/// ends — answered, drained, cut off, reset, the client gone — the watchdog hears the rest
/// exactly once (`close`): a reset HTTP/2 stream or an early answer that closes a stream before
/// its body ended no longer leaves the connection counted busy for ever.
struct WatchdogTicket {
    private var bodyOpen = true
    private var responseOpen = true
    private(set) var bodyHeld = false

    /// The request's head arrived.
    mutating func open(_ watchdog: ConnectionWatchdog) {
        watchdog.requestHeadReceived()
    }

    /// The gateway holds (or resumes) the body's reads: back-pressure, not an idle partner.
    mutating func hold(_ held: Bool, _ watchdog: ConnectionWatchdog) {
        guard bodyOpen, held != bodyHeld else { return }
        bodyHeld = held
        if held { watchdog.bodyReadsHeld() } else { watchdog.bodyReadsResumed() }
    }

    mutating func bodyEnded(_ watchdog: ConnectionWatchdog) {
        hold(false, watchdog)
        guard bodyOpen else { return }
        bodyOpen = false
        watchdog.requestBodyEnded()
    }

    mutating func responseEnded(_ watchdog: ConnectionWatchdog) {
        guard responseOpen else { return }
        responseOpen = false
        watchdog.responseEnded()
    }

    /// The request is gone: whatever is still open ends.
    mutating func close(_ watchdog: ConnectionWatchdog) {
        bodyEnded(watchdog)
        responseEnded(watchdog)
    }
}
