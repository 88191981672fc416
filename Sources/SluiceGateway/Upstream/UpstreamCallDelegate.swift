import NIOCore
import NIOHTTP1

/// Why no upstream answer can be forwarded.
enum UpstreamFailure: Error, Equatable {
    /// Breaker open or bulkhead full: 503 with Retry-After (whole seconds).
    case unavailable(retryAfter: Int)
    /// Connect or request timeout: 504.
    case timeout
    /// Refused, reset, or closed before answering: 502.
    case unreachable
}

/// How the body of a delivered response comes.
enum UpstreamResponseBody {
    /// Read whole before the head was delivered (declared ≤ 64 KiB); nil when empty.
    case whole(ByteBuffer?)
    /// Follows in `received` calls, then `upstreamCallFinished` or `brokeOff`.
    case streaming
}

/// Why a response stopped after its head went out to the partner.
enum UpstreamBreak: Error {
    /// Nothing arrived for longer than `body_timeout`.
    case stalled
    /// The upstream closed the connection before the end of the body.
    case closed
}

/// Hears how an upstream call goes; every call comes on the partner's event loop.
protocol UpstreamCallDelegate: AnyObject {
    /// A try is ready for the streamed request body: send it (`sendBody`, `endBody`).
    func upstreamCallWantsBody(_ call: UpstreamCall)
    func upstreamCall(_ call: UpstreamCall, respondedWith head: HTTPResponseHead, body: UpstreamResponseBody)
    func upstreamCall(_ call: UpstreamCall, received chunk: ByteBuffer)
    /// A streamed response is complete.
    func upstreamCallFinished(_ call: UpstreamCall)
    /// There is no answer to forward.
    func upstreamCall(_ call: UpstreamCall, failed failure: UpstreamFailure)
    /// The response broke off after its head was delivered.
    func upstreamCall(_ call: UpstreamCall, brokeOff reason: UpstreamBreak)
}
