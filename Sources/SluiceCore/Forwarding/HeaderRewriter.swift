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

/// Rewrites headers between partner and upstream (SPEC §3 Forwarding). Works on any sequence
/// of `(name, value)` pairs (NIO's `HTTPHeaders` is one): names are compared ASCII
/// case-insensitively without building lower-cased copies.
public enum HeaderRewriter {
    /// Calls `emit` for every header the upstream should receive: the caller's headers without
    /// hop-by-hop headers and credentials, plus `X-Forwarded-*`, `X-Partner-Id`,
    /// `X-Api-Version`, `X-Request-Id` and `traceparent`. `Content-Length` is set by the client
    /// from the body, `Host` from the upstream address.
    public static func forwardRequest<Headers: Sequence<(name: String, value: String)>>(
        _ incoming: Headers, _ context: ForwardingContext, emit: (String, String) -> Void
    ) {
        var nominated: Set<String> = []
        for (name, value) in incoming where HeaderName.equals(name, "connection") {
            nominated = connectionNominated(values: CollectionOfOne(value), into: nominated)
        }
        var forwardedFor: String?
        var cookies: [String] = []
        for (name, value) in incoming {
            switch HeaderName.role(of: name) {
            case .forwardedFor:
                forwardedFor = forwardedFor.map { "\($0), \(value)" } ?? value
            case .cookie:
                cookies.append(value)
            case .hopByHop, .replacedOnRequest, .requestID:
                break
            case .other:
                if nominated.isEmpty || !nominated.contains(name.lowercased()) { emit(name, value) }
            }
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
    /// headers (and those the upstream's `Connection` names, lower-cased in `nominated`) are
    /// dropped; `X-Request-Id` is replaced by the gateway's.
    public static func keepsResponseHeader(_ name: String, nominated: Set<String>) -> Bool {
        switch HeaderName.role(of: name) {
        case .hopByHop, .requestID: return false
        case .other, .replacedOnRequest, .forwardedFor, .cookie: return nominated.isEmpty || !nominated.contains(name.lowercased())
        }
    }

    /// Lower-cased names listed in `Connection` header values.
    public static func connectionNominated(values: some Sequence<String>) -> Set<String> {
        connectionNominated(values: values, into: [])
    }

    private static func connectionNominated(values: some Sequence<String>, into names: Set<String>) -> Set<String> {
        var names = names
        for value in values {
            for token in value.split(separator: ",") {
                let name = token.trimmingASCIISpaces().lowercased()
                if !name.isEmpty { names.insert(name) }
            }
        }
        return names
    }
}

/// What a header name means to the gateway, found without allocating.
public enum HeaderName {
    enum Role {
        /// Describes one connection, never forwarded (RFC 9110 §7.6.1).
        case hopByHop
        /// Consumed or set by the gateway on requests (Host, credentials, X-Forwarded-*, …).
        case replacedOnRequest
        /// `X-Request-Id`: the gateway's own on both sides.
        case requestID
        case forwardedFor
        case cookie
        case other
    }

    static func role(of name: String) -> Role {
        switch name.utf8.count {
        case 2: return equals(name, "te") ? .hopByHop : .other
        case 4: return equals(name, "host") ? .replacedOnRequest : .other
        case 6:
            if equals(name, "cookie") { return .cookie }
            return equals(name, "expect") ? .replacedOnRequest : .other
        case 7: return equals(name, "trailer") || equals(name, "upgrade") ? .hopByHop : .other
        case 9: return equals(name, "x-api-key") ? .replacedOnRequest : .other
        case 10: return equals(name, "connection") || equals(name, "keep-alive") ? .hopByHop : .other
        case 11: return equals(name, "traceparent") ? .replacedOnRequest : .other
        case 12:
            if equals(name, "x-request-id") { return .requestID }
            return equals(name, "x-partner-id") ? .replacedOnRequest : .other
        case 13: return equals(name, "authorization") || equals(name, "x-api-version") ? .replacedOnRequest : .other
        case 14: return equals(name, "content-length") ? .replacedOnRequest : .other
        case 15: return equals(name, "x-forwarded-for") ? .forwardedFor : .other
        case 16:
            if equals(name, "proxy-connection") { return .hopByHop }
            return equals(name, "x-forwarded-host") ? .replacedOnRequest : .other
        case 17:
            if equals(name, "transfer-encoding") { return .hopByHop }
            return equals(name, "x-forwarded-proto") ? .replacedOnRequest : .other
        case 18: return equals(name, "proxy-authenticate") ? .hopByHop : .other
        case 19: return equals(name, "proxy-authorization") ? .hopByHop : .other
        default: return .other
        }
    }

    /// ASCII case-insensitive comparison with a lower-case name.
    public static func equals(_ name: String, _ lowercased: StaticString) -> Bool {
        guard name.utf8.count == lowercased.utf8CodeUnitCount else { return false }
        return lowercased.withUTF8Buffer { expected in
            var index = 0
            for byte in name.utf8 {
                let folded = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
                if folded != expected[index] { return false }
                index += 1
            }
            return true
        }
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
