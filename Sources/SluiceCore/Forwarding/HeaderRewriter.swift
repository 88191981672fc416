public import HTTPTypes

/// What the gateway adds to a request it forwards.
public struct ForwardingContext: Sendable {
    /// The caller's IP address.
    public var clientAddress: String?
    /// `https` or `http`: how the request reached the gateway.
    public var scheme: String
    /// The `Host` (or `:authority`) the caller used.
    public var host: String?
    public var partnerID: String
    public var version: String
    public var requestID: String
    public var traceparent: String

    public init(
        clientAddress: String?, scheme: String, host: String?, partnerID: String, version: String, requestID: String,
        traceparent: String
    ) {
        self.clientAddress = clientAddress
        self.scheme = scheme
        self.host = host
        self.partnerID = partnerID
        self.version = version
        self.requestID = requestID
        self.traceparent = traceparent
    }
}

/// Rewrites headers between partner and upstream (SPEC §3 Forwarding).
public enum HeaderRewriter {
    /// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade",
    ]

    /// Request headers the gateway consumes or sets itself.
    static let replacedOnRequest: Set<String> = [
        "host", "content-length", "expect", "authorization", "x-api-key", "x-forwarded-for", "x-forwarded-proto",
        "x-forwarded-host", "x-partner-id", "x-api-version", "x-request-id", "traceparent", "cookie",
    ]

    /// Calls `emit` for every header the upstream should receive: the caller's headers without
    /// hop-by-hop headers and credentials, plus `X-Forwarded-*`, `X-Partner-Id`,
    /// `X-Api-Version`, `X-Request-Id` and `traceparent`. `Content-Length` is set by the client
    /// from the body, `Host` from the upstream address.
    public static func forwardRequest(_ incoming: HTTPFields, _ context: ForwardingContext, emit: (String, String) -> Void) {
        let nominated = connectionNominated(incoming)
        var forwardedFor: String?
        var cookies: [String] = []
        for field in incoming {
            let name = field.name.canonicalName
            if name == "x-forwarded-for" {
                forwardedFor = forwardedFor.map { "\($0), \(field.value)" } ?? field.value
                continue
            }
            if name == "cookie" {
                cookies.append(field.value)
                continue
            }
            if hopByHop.contains(name) || replacedOnRequest.contains(name) || nominated.contains(name) { continue }
            emit(field.name.rawName, field.value)
        }
        if !cookies.isEmpty { emit("Cookie", cookies.joined(separator: "; ")) }
        if let client = context.clientAddress {
            emit("X-Forwarded-For", forwardedFor.map { "\($0), \(client)" } ?? client)
        } else if let forwardedFor {
            emit("X-Forwarded-For", forwardedFor)
        }
        emit("X-Forwarded-Proto", context.scheme)
        if let host = context.host { emit("X-Forwarded-Host", host) }
        emit("X-Partner-Id", context.partnerID)
        emit("X-Api-Version", context.version)
        emit("X-Request-Id", context.requestID)
        emit("traceparent", context.traceparent)
    }

    /// Whether a response header from the upstream is passed on to the partner. Hop-by-hop
    /// headers (and those the upstream's `Connection` names) are dropped; `X-Request-Id` is
    /// replaced by the gateway's.
    public static func keepsResponseHeader(lowercasedName name: String, nominated: Set<String>) -> Bool {
        !(hopByHop.contains(name) || nominated.contains(name) || name == "x-request-id")
    }

    /// Lower-cased names listed in `Connection` headers.
    public static func connectionNominated(_ fields: HTTPFields) -> Set<String> {
        connectionNominated(values: fields[values: .connection])
    }

    public static func connectionNominated(values: some Sequence<String>) -> Set<String> {
        var names: Set<String> = []
        for value in values {
            for token in value.split(separator: ",") {
                let name = token.trimmingASCIISpaces().lowercased()
                if !name.isEmpty { names.insert(name) }
            }
        }
        return names
    }
}

extension Substring {
    func trimmingASCIISpaces() -> Substring {
        var result = self
        while let first = result.first, first == " " || first == "\t" { result.removeFirst() }
        while let last = result.last, last == " " || last == "\t" { result.removeLast() }
        return result
    }
}
