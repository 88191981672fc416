import NIOCore
import NIOHTTP1

/// The request an upstream call sends on each try.
struct UpstreamRequest {
    enum Body {
        case none
        /// Kept whole, so every try can send it.
        case whole(ByteBuffer)
        /// Streamed from the partner as it arrives (`UpstreamCallDelegate.upstreamCallWantsBody`).
        case streamed

        var kind: BodyKind {
            switch self {
            case .none: .none
            case .whole: .whole
            case .streamed: .streamed
            }
        }
    }

    /// How the body travels, without the bytes.
    enum BodyKind {
        case none
        case whole
        case streamed
    }

    /// Method and headers; each try sets its target's path (`uri`) and `Host`.
    var head: HTTPRequestHead
    /// The path and query to ask for, after the target's base path.
    var target: String
    /// The partner's id, for `partner_hash` ("" when there is none).
    var partner: String
    var body: Body
    /// Whether the request may be sent more than once (idempotent method or `Idempotency-Key`).
    var retryable: Bool
}
