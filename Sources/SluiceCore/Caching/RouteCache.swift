/// A route's `cache:` block (SPEC §9): how its GET answers are kept and shared.
public struct RouteCache: Sendable, Equatable {
    public enum Scope: String, Sendable, CaseIterable {
        /// Each partner has its own copy (the partner id is part of the key).
        case partner
        /// One copy for every partner: public data only.
        case shared
    }

    /// Freshness when the upstream gives none (its `s-maxage`, `max-age` or `Expires` win).
    public var ttl: Duration
    public var scope: Scope
    /// Request headers that are part of the key, besides the upstream's `Vary` (lowercased).
    public var vary: [String]
    /// How long a stale entry is answered at once while one background call refreshes it.
    public var staleWhileRevalidate: Duration
    /// How long a stale entry is answered when the upstream fails, times out or its breaker is open.
    public var staleIfError: Duration
    /// Larger answers are not stored.
    public var maxBody: Int
    /// A digest of the settings above: part of every key, so that a reload that changes the
    /// block reaches new keys.
    public var digest: String {
        CacheKey.make(
            route: "\(ttl.milliseconds)|\(scope.rawValue)|\(staleWhileRevalidate.milliseconds)|\(staleIfError.milliseconds)|\(maxBody)", partner: nil,
            pathAndQuery: "", vary: vary.map { ($0, nil) }
        )
    }

    /// The largest `max_body` a policy may set.
    public static let maxBodyLimit = 64 << 20

    public init(
        ttl: Duration, scope: Scope = .partner, vary: [String] = [], staleWhileRevalidate: Duration = .zero, staleIfError: Duration = .zero,
        maxBody: Int = 1 << 20
    ) {
        self.ttl = ttl
        self.scope = scope
        self.vary = vary
        self.staleWhileRevalidate = staleWhileRevalidate
        self.staleIfError = staleIfError
        self.maxBody = maxBody
    }

    /// Reads a `cache:` mapping; nil (with every problem reported) when it is not valid.
    static func read(_ value: YAMLValue, context: String) -> RouteCache? {
        guard let map = value.mapping(context) else { return nil }
        let ttl = map.required("ttl")?.duration("\(context) ttl")
        let scopeValue = map.optional("scope")
        let scope = scopeValue?.oneOf(Scope.self, "\(context) scope")
        var vary: [String] = []
        var varyValid = true
        for (name, item) in map.optional("vary")?.stringList("\(context) vary") ?? [] {
            guard HTTPToken.isValid(name) else {
                item.report("\(context) vary: '\(name)' is not a header name")
                varyValid = false
                continue
            }
            if !vary.contains(name.lowercased()) { vary.append(name.lowercased()) }
        }
        let whileRevalidateValue = map.optional("stale_while_revalidate")
        let whileRevalidate = whileRevalidateValue?.duration("\(context) stale_while_revalidate")
        let ifErrorValue = map.optional("stale_if_error")
        let ifError = ifErrorValue?.duration("\(context) stale_if_error")
        let maxBodyValue = map.optional("max_body")
        var maxBody = maxBodyValue?.size("\(context) max_body")
        if let bytes = maxBody, let maxBodyValue {
            if bytes > maxBodyLimit {
                maxBodyValue.report("\(context) max_body must be at most 64MiB")
                maxBody = nil
            } else if bytes == 0 {
                maxBodyValue.report("\(context) max_body must be greater than 0")
                maxBody = nil
            }
        }
        map.finish()
        let optionalsValid = (scopeValue == nil || scope != nil) && (whileRevalidateValue == nil || whileRevalidate != nil)
            && (ifErrorValue == nil || ifError != nil) && (maxBodyValue == nil || maxBody != nil)
        guard let ttl, varyValid, optionalsValid else { return nil }
        return RouteCache(
            ttl: ttl, scope: scope ?? .partner, vary: vary, staleWhileRevalidate: whileRevalidate ?? .zero, staleIfError: ifError ?? .zero,
            maxBody: maxBody ?? 1 << 20
        )
    }
}

/// RFC 9110 `token` (header names, directive names).
public enum HTTPToken {
    public static func isValid(_ text: some StringProtocol) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy { byte in
            isAlphanumericASCII(byte) || "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }
}
