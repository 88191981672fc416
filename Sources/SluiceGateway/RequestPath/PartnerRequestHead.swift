import NIOHTTP1

/// A partner request's head as the stages see it: plain values, whichever protocol carried it.
struct PartnerRequestHead {
    var method: HTTPMethod
    /// Path and query as sent.
    var target: String
    var headers: HTTPHeaders
    /// HTTP/1.0 or 1.1; for HTTP/2 streams, 2.0.
    var version: HTTPVersion
    var isHTTP2: Bool { version.major == 2 }
}

/// How the body of a request to forward is framed.
enum RequestBodyLength: Equatable {
    case none
    case known(Int)
    /// Chunked (HTTP/1.1) or DATA frames without a Content-Length (HTTP/2).
    case unknown
}
