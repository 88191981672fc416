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
    /// The caller is a proxy inside `listen.trusted_proxies`: its `X-Forwarded-For` is kept and
    /// appended to, and its `X-Forwarded-Proto`/`-Host` are passed on.
    public var fromTrustedProxy: Bool

    public init(
        clientAddress: String?, scheme: String, host: String?, partnerID: String, version: String, requestID: String,
        traceparent: String, fromTrustedProxy: Bool = false
    ) {
        self.fromTrustedProxy = fromTrustedProxy
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
    /// hop-by-hop headers, credentials and the headers proxies use to say where a request came
    /// from (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Original-URL`, `X-Rewrite-URL`, the
    /// gateway's own `X-Partner-Id`/`X-Api-Version`, and any name with `_`, which some servers
    /// read as `-`) — a partner is not a trusted proxy — plus `X-Forwarded-For` (the address
    /// the gateway saw, appended to a trusted proxy's list), `X-Forwarded-Proto`/`-Host` (a
    /// trusted proxy's, else the gateway's), `X-Partner-Id`, `X-Api-Version`, `X-Request-Id`
    /// and `traceparent`. `Content-Length` is set by the client from the body, `Host` from the
    /// upstream address.
    public static func forwardRequest<Headers: Sequence<(name: String, value: String)>>(
        _ incoming: Headers, _ context: ForwardingContext, emit: (String, String) -> Void
    ) {
        var nominated: Set<String> = []
        for (name, value) in incoming where HeaderName.equals(name, "connection") {
            nominated = connectionNominated(values: CollectionOfOne(value), into: nominated)
        }
        let trusted = context.fromTrustedProxy
        var forwardedFor: String?
        var forwardedProto: String?
        var forwardedHost: String?
        var cookies: [String] = []
        for (name, value) in incoming {
            switch HeaderName.role(of: name) {
            case .forwardedFor:
                if trusted { forwardedFor = forwardedFor.map { "\($0), \(value)" } ?? value }
            case .forwardedProto:
                if trusted, forwardedProto == nil, value == "https" || value == "http" { forwardedProto = value }
            case .forwardedHost:
                if trusted, forwardedHost == nil { forwardedHost = value }
            case .cookie:
                cookies.append(value)
            case .hopByHop, .replacedOnRequest, .requestID, .proxyTrust:
                break
            case .other:
                if name.utf8.contains(UInt8(ascii: "_")) { continue }
                if nominated.isEmpty || !nominated.contains(name.lowercased()) { emit(name, value) }
            }
        }
        if !cookies.isEmpty { emit("Cookie", cookies.joined(separator: "; ")) }
        if let client = context.clientAddress {
            emit("X-Forwarded-For", forwardedFor.map { "\($0), \(client)" } ?? client)
        } else if let forwardedFor {
            emit("X-Forwarded-For", forwardedFor)
        }
        emit("X-Forwarded-Proto", forwardedProto ?? context.scheme)
        if let host = forwardedHost ?? context.host { emit("X-Forwarded-Host", host) }
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
        case .other, .replacedOnRequest, .forwardedFor, .forwardedProto, .forwardedHost, .proxyTrust, .cookie:
            return nominated.isEmpty || !nominated.contains(name.lowercased())
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
        /// Consumed or set by the gateway on requests (Host, credentials, the gateway's own headers, …).
        case replacedOnRequest
        /// `X-Request-Id`: the gateway's own on both sides.
        case requestID
        case forwardedFor
        case forwardedProto
        case forwardedHost
        /// Says where a request came from, as proxies do (`Forwarded`, `X-Real-IP`, other
        /// `X-Forwarded-*`, `X-Original-URL`, `X-Rewrite-URL`): never taken from a partner.
        case proxyTrust
        case cookie
        case other
    }

    static func role(of name: String) -> Role {
        let count = name.utf8.count
        if count >= 12, hasPrefix(name, "x-forwarded-") {
            switch count {
            case 15 where equals(name, "x-forwarded-for"): return .forwardedFor
            case 16 where equals(name, "x-forwarded-host"): return .forwardedHost
            case 17 where equals(name, "x-forwarded-proto"): return .forwardedProto
            default: return .proxyTrust
            }
        }
        switch count {
        case 2: return equals(name, "te") ? .hopByHop : .other
        case 4: return equals(name, "host") ? .replacedOnRequest : .other
        case 6:
            if equals(name, "cookie") { return .cookie }
            return equals(name, "expect") ? .replacedOnRequest : .other
        case 7: return equals(name, "trailer") || equals(name, "upgrade") ? .hopByHop : .other
        case 9:
            if equals(name, "x-api-key") { return .replacedOnRequest }
            return equals(name, "forwarded") || equals(name, "x-real-ip") ? .proxyTrust : .other
        case 10: return equals(name, "connection") || equals(name, "keep-alive") ? .hopByHop : .other
        case 11: return equals(name, "traceparent") ? .replacedOnRequest : .other
        case 12:
            if equals(name, "x-request-id") { return .requestID }
            return equals(name, "x-partner-id") ? .replacedOnRequest : .other
        case 13:
            if equals(name, "authorization") || equals(name, "x-api-version") { return .replacedOnRequest }
            return equals(name, "x-rewrite-url") ? .proxyTrust : .other
        case 14:
            if equals(name, "content-length") { return .replacedOnRequest }
            return equals(name, "x-original-url") ? .proxyTrust : .other
        case 16: return equals(name, "proxy-connection") ? .hopByHop : .other
        case 17: return equals(name, "transfer-encoding") ? .hopByHop : .other
        case 18: return equals(name, "proxy-authenticate") ? .hopByHop : .other
        case 19: return equals(name, "proxy-authorization") ? .hopByHop : .other
        default: return .other
        }
    }

    /// ASCII case-insensitive prefix comparison with a lower-case prefix.
    static func hasPrefix(_ name: String, _ lowercased: StaticString) -> Bool {
        guard name.utf8.count >= lowercased.utf8CodeUnitCount else { return false }
        return lowercased.withUTF8Buffer { expected in
            for (index, byte) in zip(expected.indices, name.utf8) {
                let folded = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
                if folded != expected[index] { return false }
            }
            return true
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
