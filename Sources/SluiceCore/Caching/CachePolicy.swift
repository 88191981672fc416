/// The freshness and cacheability rules of Sluice's shared cache (RFC 9111 for a shared cache,
/// RFC 5861's stale extensions), as pure functions of headers and a clock in epoch
/// milliseconds: what may be stored and for how long, what an entry may answer now, and when a
/// partner's conditional request is answered 304.
public enum CachePolicy {
    /// Why an answer was not stored (the `detail` of its `Cache-Status`).
    public enum NotStored: String, Error, Sendable, Equatable {
        case noStore = "no-store"
        case privateAnswer = "private"
        case setCookie = "set-cookie"
        /// A status a shared cache does not keep (5xx, partial content, 304, …).
        case status
        case varyAll = "vary-star"
        case tooLarge = "too-large"
    }

    /// How long a stored answer is fresh, and how long after that it may still be answered.
    public struct Freshness: Sendable, Equatable, Codable {
        /// From the answer's generation (its `Age` counts against it), milliseconds.
        public var lifetime: Int64
        public var staleWhileRevalidate: Int64
        public var staleIfError: Int64

        public init(lifetime: Int64, staleWhileRevalidate: Int64, staleIfError: Int64) {
            self.lifetime = lifetime
            self.staleWhileRevalidate = staleWhileRevalidate
            self.staleIfError = staleIfError
        }
    }

    /// Statuses a shared cache may keep without being told more (RFC 9110 §15.1 "heuristically
    /// cacheable"), less 206 (partial answers are never stored) and 501 (no 5xx is).
    public static let storableStatuses: Set<Int> = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414]

    /// Whether an upstream answer may be stored and, if so, its freshness: the upstream's
    /// `s-maxage`, else `max-age`, else `Expires` − `Date`, else the route's `ttl`; `no-cache`
    /// stores it to be revalidated on every use; `must-revalidate` is never answered stale.
    /// The stale windows are the answer's own `stale-while-revalidate`/`stale-if-error` when it
    /// has them, else the route's. `bodyLength` is nil while unknown (a streamed answer is
    /// checked against `max_body` as it arrives).
    public static func storability(
        status: Int, headers: [(name: String, value: String)], bodyLength: Int?, route: RouteCache, now: Int64
    ) -> Result<Freshness, NotStored> {
        let control = CacheControl(values(of: "cache-control", in: headers))
        if control.noStore { return .failure(.noStore) }
        if control.isPrivate { return .failure(.privateAnswer) }
        if values(of: "set-cookie", in: headers).first != nil { return .failure(.setCookie) }
        guard storableStatuses.contains(status), values(of: "content-range", in: headers).first == nil else { return .failure(.status) }
        if varyNames(headers) == nil { return .failure(.varyAll) }
        if let bodyLength, bodyLength > route.maxBody { return .failure(.tooLarge) }
        var lifetime: Int64
        if let seconds = control.sharedMaxAge ?? control.maxAge {
            lifetime = seconds * 1_000
        } else if let expires = values(of: "expires", in: headers).first {
            let date = values(of: "date", in: headers).first.flatMap(HTTPDate.parse) ?? now
            lifetime = HTTPDate.parse(expires).map { max(0, $0 - date) } ?? 0
        } else {
            lifetime = route.ttl.milliseconds
        }
        if control.noCache { lifetime = 0 }
        let stale: (Int64?, Duration) -> Int64 = { own, routes in control.mustRevalidate ? 0 : own.map { $0 * 1_000 } ?? routes.milliseconds }
        return .success(
            Freshness(
                lifetime: lifetime, staleWhileRevalidate: stale(control.staleWhileRevalidate, route.staleWhileRevalidate),
                staleIfError: stale(control.staleIfError, route.staleIfError)
            )
        )
    }

    /// The request header names of the upstream's `Vary`, lowercased and sorted; nil for
    /// `Vary: *` (such an answer is not stored).
    public static func varyNames(_ headers: [(name: String, value: String)]) -> [String]? {
        var names: Set<String> = []
        for line in values(of: "vary", in: headers) {
            for item in line.split(separator: ",") {
                let name = item.trimmingASCIISpaces().lowercased()
                if name == "*" { return nil }
                if !name.isEmpty { names.insert(name) }
            }
        }
        return names.sorted()
    }

    /// What a request asks of the cache.
    public enum RequestMode: Sendable, Equatable {
        /// An entry may answer (subject to its freshness; `maxAge` caps the age it may have).
        case normal(maxAge: Int64?)
        /// `no-cache` (or `max-age=0`, `Pragma: no-cache`): only after revalidation.
        case revalidate
        /// `no-store`: the cache is not used and nothing is stored.
        case bypass
    }

    public static func requestMode(_ headers: [(name: String, value: String)]) -> RequestMode {
        let lines = values(of: "cache-control", in: headers)
        let control = CacheControl(lines)
        if control.noStore { return .bypass }
        if control.noCache || control.maxAge == 0 { return .revalidate }
        if lines.isEmpty, values(of: "pragma", in: headers).contains(where: { $0.lowercased().contains("no-cache") }) { return .revalidate }
        return .normal(maxAge: control.maxAge.map { $0 * 1_000 })
    }

    /// What a stored entry may do for a request now.
    public enum Use: Sendable, Equatable {
        /// Answer it; `ttl` (ms) is how much freshness is left.
        case fresh(ttl: Int64)
        /// Answer it at once and refresh it in the background (within `stale_while_revalidate`).
        case staleWhileRevalidate
        /// Revalidate (or fetch) first; answer it stale only if the upstream fails (within
        /// `stale_if_error`, else `allowedOnError` is false).
        case revalidate(allowedOnError: Bool)
    }

    /// The age of an entry stored at `storedAt` whose answer carried `Age: initialAge` (ms).
    public static func age(storedAt: Int64, initialAge: Int64, now: Int64) -> Int64 {
        initialAge + max(0, now - storedAt)
    }

    public static func use(_ freshness: Freshness, age: Int64, request: RequestMode) -> Use {
        let staleness = age - freshness.lifetime
        let allowedOnError = staleness <= freshness.staleIfError
        switch request {
        case .bypass, .revalidate:
            return .revalidate(allowedOnError: allowedOnError)
        case .normal(let maxAge):
            if let maxAge, age > maxAge { return .revalidate(allowedOnError: allowedOnError) }
            if staleness < 0 { return .fresh(ttl: -staleness) }
            if staleness <= freshness.staleWhileRevalidate, freshness.staleWhileRevalidate > 0 { return .staleWhileRevalidate }
            return .revalidate(allowedOnError: allowedOnError)
        }
    }

    /// Whether a partner's conditional GET is answered 304 by an entry with these validators:
    /// `If-None-Match` (weak comparison, `*` matches any entry with an ETag) decides when sent;
    /// else `If-Modified-Since` against the entry's `Last-Modified`.
    public static func notModified(request: [(name: String, value: String)], etag: String?, lastModified: String?) -> Bool {
        let ifNoneMatch = values(of: "if-none-match", in: request)
        if !ifNoneMatch.isEmpty {
            guard let etag else { return false }
            let stored = weak(etag)
            return ifNoneMatch.contains { line in
                line.split(separator: ",").contains { candidate in
                    let tag = candidate.trimmingASCIISpaces()
                    return tag == "*" || weak(tag) == stored
                }
            }
        }
        guard let since = values(of: "if-modified-since", in: request).first.flatMap(HTTPDate.parse),
            let modified = lastModified.flatMap(HTTPDate.parse)
        else { return false }
        return modified <= since
    }

    /// An entity tag without its weakness indicator (RFC 9110 §8.8.3.2 weak comparison).
    private static func weak(_ tag: some StringProtocol) -> Substring {
        let text = Substring(tag)
        return text.hasPrefix("W/") ? text.dropFirst(2) : text
    }

    /// The values of header `name` (lowercase), in order.
    static func values(of name: String, in headers: [(name: String, value: String)]) -> [String] {
        headers.compactMap { $0.name.lowercased() == name ? $0.value : nil }
    }
}
