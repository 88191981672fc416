/// Where a cached answer is kept (SPEC §9): hex SHA-256 of the route, the partner (unless the
/// route's scope is `shared`), GET for GET and HEAD (a HEAD is answered from the GET's entry),
/// the path with query as sent, and the values of the vary headers. Each part is
/// length-prefixed, so no request can be shaped to reach another partner's key; the partner
/// cannot choose the key's prefix (the store adds it), so no key leaves the cache's space.
public enum CacheKey {
    /// `vary`: request header names (lowercase) and the request's values of each (nil when
    /// absent; several lines joined by `, `), in the order given (callers sort them).
    public static func make(route: String, partner: String?, pathAndQuery: String, vary: [(name: String, value: String?)]) -> String {
        var digest = PartsDigest()
        for part in [route, partner, "GET", pathAndQuery] { digest.add(part) }
        for (name, value) in vary {
            digest.add(name)
            digest.add(value)
        }
        return digest.hex()
    }

    /// The key of one variant of an entry whose upstream answered `Vary`: the entry's own key
    /// (`make(…)`), then the varying header names (lowercase, sorted) and a request's values of
    /// them. The first answer stored for a URL sits at its plain key and names the headers; the
    /// others sit at their variant keys.
    public static func variant(of key: String, names: [String], values: [String?]) -> String {
        var digest = PartsDigest()
        digest.add("variant")
        digest.add(key)
        for (name, value) in zip(names, values) {
            digest.add(name)
            digest.add(value)
        }
        return digest.hex()
    }
}

/// The `Cache-Status` header (RFC 9211) with the cache name `sluice`.
public enum CacheStatus {
    /// Answered from the cache; `ttl` is the freshness left in seconds (negative when stale).
    public static func hit(ttl milliseconds: Int64, detail: String? = nil) -> String {
        "sluice; hit; ttl=\(floorDiv(milliseconds, 1_000))" + (detail.map { "; detail=\($0)" } ?? "")
    }

    /// Why a request went to the upstream (RFC 9211 §2.2).
    public enum Forward: String, Sendable {
        /// No entry.
        case miss
        /// A stale entry (revalidated or replaced).
        case stale
        /// The request asked for it (`no-cache`, `max-age`).
        case request
        /// The request asked not to use the cache (`no-store`).
        case bypass
    }

    /// Went to the upstream: `status` is what it answered, `stored` whether the answer was kept,
    /// `detail` why not (a `CachePolicy.NotStored` value).
    public static func forwarded(_ reason: Forward, status: Int?, stored: Bool, detail: String? = nil) -> String {
        var value = "sluice; fwd=\(reason.rawValue)"
        if let status { value += "; fwd-status=\(status)" }
        if stored { value += "; stored" }
        if let detail { value += "; detail=\(detail)" }
        return value
    }

    private static func floorDiv(_ value: Int64, _ divisor: Int64) -> Int64 {
        value >= 0 ? value / divisor : -((-value + divisor - 1) / divisor)
    }
}
