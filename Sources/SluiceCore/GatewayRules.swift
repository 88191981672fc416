public import Foundation

/// A partner as the request path needs it.
public final class Partner: Sendable {
    public let policy: PartnerPolicy
    public var id: String { policy.id }
    /// Plan with overrides applied.
    public let limits: LimitSet
    /// The version used when a request names none: the first listed, else default_version.
    public let pinnedVersion: String

    init(policy: PartnerPolicy, limits: LimitSet, defaultVersion: String) {
        self.policy = policy
        self.limits = limits
        self.pinnedVersion = policy.versions.first ?? defaultVersion
    }
}

/// A route with its upstream resolved.
public final class Route: Sendable {
    public let policy: RoutePolicy
    public var id: String { policy.id }
    public let upstream: UpstreamPolicy
    /// The route's request_timeout, else the upstream's.
    public let requestTimeout: Duration
    /// The path sent upstream (without the upstream's base path).
    public let upstreamPath: PathTemplate
    /// The canary of this policy generation, when the route has one.
    public let canary: CanarySplit?
    /// What the route's cache keys start with: its id and a digest of its `cache:` block (a
    /// reload that changes the block reaches new keys); nil without a cache.
    public let cacheKeyRoute: String?

    init(policy: RoutePolicy, upstream: UpstreamPolicy, canaryUpstream: UpstreamPolicy? = nil) {
        self.policy = policy
        self.upstream = upstream
        self.requestTimeout = policy.requestTimeout ?? upstream.requestTimeout
        self.upstreamPath = policy.upstreamPath ?? policy.path
        cacheKeyRoute = policy.cache.map { "\(policy.id)#\($0.digest.prefix(16))" }
        if let canaryPolicy = policy.canary, let canaryUpstream {
            canary = CanarySplit(canaryPolicy, upstream: canaryUpstream)
        } else {
            canary = nil
        }
    }

    /// The upstream `partner`'s call goes to: the canary's when the partner is on it.
    public func upstream(for partner: String) -> (upstream: UpstreamPolicy, canary: CanarySplit?) {
        if let canary, canary.takes(partner: partner) { return (canary.upstream, canary) }
        return (upstream, nil)
    }

    /// The request timeout on `upstream` (the route's own, else that upstream's).
    public func requestTimeout(on upstream: UpstreamPolicy) -> Duration {
        policy.requestTimeout ?? upstream.requestTimeout
    }
}

/// One API version: its routes and the headers its responses carry.
public struct VersionRules: Sendable {
    public let version: APIVersion
    /// `Deprecation: @UNIX-SECONDS` (RFC 9745) when deprecated.
    public let deprecationHeader: String?
    /// `Sunset: HTTP-DATE` (RFC 8594) when a sunset is set.
    public let sunsetHeader: String?
    public let routes: RouteTable<Route>
}

/// What version resolution decided for a request.
public enum VersionResolution: Sendable {
    /// `path` is the request path without the version prefix.
    case resolved(VersionRules, path: Substring)
    /// A version that does not exist: 404 unknown-version.
    case unknown(String)
    /// A version this partner may not use: 403 forbidden-version.
    case forbidden(VersionRules)
}

/// The compiled, read-only form of a `PolicySet` that every request reads: key and certificate
/// indexes, one route table per version, precomputed headers. Built once per (re)load.
public final class GatewayRules: Sendable {
    public let policy: PolicySet
    public let loadedAt: Date
    public let versions: [String: VersionRules]
    /// Every route by id (one object for all its versions).
    public let routes: [String: Route]
    public let partners: [String: Partner]
    /// Partners' key hashes bucketed by their first 8 bytes; a bucket is compared in constant time.
    private let keyIndex: [UInt64: [(digest: SHA256Digest, partner: Partner)]]
    private let subjectIndex: [String: Partner]

    public init(_ policy: PolicySet, loadedAt: Date = Date()) {
        self.policy = policy
        self.loadedAt = loadedAt
        var partners: [String: Partner] = [:]
        var keyIndex: [UInt64: [(SHA256Digest, Partner)]] = [:]
        var subjectIndex: [String: Partner] = [:]
        for partnerPolicy in policy.partners {
            let partner = Partner(
                policy: partnerPolicy, limits: policy.limits(for: partnerPolicy), defaultVersion: policy.routes.defaultVersion
            )
            partners[partner.id] = partner
            for key in partnerPolicy.keys { keyIndex[key.sha256.words.0, default: []].append((key.sha256, partner)) }
            for subject in partnerPolicy.clientCertificateSubjects {
                if let canonical = DistinguishedName.canonical(subject) { subjectIndex[canonical] = partner }
            }
        }
        self.partners = partners
        self.keyIndex = keyIndex
        self.subjectIndex = subjectIndex

        // One Route per route id, shared by its versions (a canary's abort covers them all).
        var routes: [String: Route] = [:]
        for routePolicy in policy.routes.routes {
            guard let upstream = policy.upstreams[routePolicy.upstream] else { continue }
            routes[routePolicy.id] = Route(policy: routePolicy, upstream: upstream, canaryUpstream: routePolicy.canary.flatMap { policy.upstreams[$0.upstream] })
        }
        var versions: [String: VersionRules] = [:]
        for version in policy.routes.versions {
            let entries = policy.routes.routes.filter { $0.versions.contains(version.name) }.compactMap { routePolicy in
                routes[routePolicy.id].map { (method: routePolicy.method, template: routePolicy.path, route: $0) }
            }
            versions[version.name] = VersionRules(
                version: version,
                deprecationHeader: version.status == .deprecated ? version.deprecatedAt.map { "@\(Int($0.timeIntervalSince1970))" } : nil,
                sunsetHeader: version.sunset.map(HTTPDate.format),
                routes: RouteTable(entries)
            )
        }
        self.versions = versions
        self.routes = routes
    }

    /// The partner owning the API key `key`, compared by SHA-256 hash.
    public func partner(forKey key: some StringProtocol) -> Partner? {
        let digest = SHA256Digest.of(key)
        guard let bucket = keyIndex[digest.words.0] else { return nil }
        var found: Partner?
        for entry in bucket where entry.digest.constantTimeEquals(digest) { found = entry.partner }
        return found
    }

    /// The partner whose `client_cert_subjects` lists `subject` (an RFC 4514 string).
    public func partner(forCertificateSubject subject: String) -> Partner? {
        DistinguishedName.canonical(subject).flatMap { subjectIndex[$0] }
    }

    /// Picks the version: path prefix (`/v2/...`), then `API-Version`, then the partner's pinned
    /// default (which already falls back to default_version).
    public func resolveVersion(path: Substring, apiVersionHeader: String?, partner: Partner) -> VersionResolution {
        var name: Substring
        var rest = path
        let afterSlash = path.utf8.dropFirst()
        let end = afterSlash.firstIndex(of: UInt8(ascii: "/")) ?? afterSlash.endIndex
        let first = Substring(path.utf8[afterSlash.startIndex..<end])
        if APIVersionName.isValid(first) {
            name = first
            rest = end == path.endIndex ? "/" : path[end...]
        } else if let header = apiVersionHeader?.utf8.isEmpty == false ? apiVersionHeader : nil {
            name = Substring(header)
        } else {
            name = Substring(partner.pinnedVersion)
        }
        guard let rules = versions[String(name)] else { return .unknown(String(name)) }
        guard partner.policy.allows(version: rules.version.name) else { return .forbidden(rules) }
        return .resolved(rules, path: rest)
    }
}

/// RFC 9110 HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`).
public enum HTTPDate {
    public static func format(_ date: Date) -> String {
        date.formatted(
            Date.VerbatimFormatStyle(
                format: "\(weekday: .abbreviated), \(day: .twoDigits) \(month: .abbreviated) \(year: .padded(4)) \(hour: .twoDigits(clock: .twentyFourHour, hourCycle: .zeroBased)):\(minute: .twoDigits):\(second: .twoDigits) GMT",
                locale: Locale(identifier: "en_US_POSIX"),
                timeZone: TimeZone(identifier: "UTC")!,
                calendar: Calendar(identifier: .gregorian)
            )
        )
    }
}
