public import Foundation

/// An API version from `routes.yaml`.
public struct APIVersion: Sendable, Equatable {
    public enum Status: String, Sendable, CaseIterable {
        case current
        case deprecated
    }

    public var name: String
    public var status: Status
    /// When the version was deprecated (`Deprecation` header).
    public var deprecatedAt: Date?
    /// When the version goes away (`Sunset` header).
    public var sunset: Date?
}

/// One route from `routes.yaml`.
public struct RoutePolicy: Sendable, Equatable {
    public enum AsyncMode: String, Sendable, CaseIterable {
        /// Every call becomes a task answered with 202.
        case always
        /// A task only with `Prefer: respond-async`.
        case onRequest = "on-request"
        /// Always synchronous (default).
        case never
    }

    public enum IdempotencyMode: String, Sendable, CaseIterable {
        /// Calls without `Idempotency-Key` get 400 missing-idempotency-key.
        case required
        /// A key is honoured when sent (default for POST and PATCH).
        case optional
    }

    public var id: String
    public var versions: [String]
    public var method: String
    public var path: PathTemplate
    public var upstream: String
    /// Path sent upstream; nil = the same as `path`.
    public var upstreamPath: PathTemplate?
    public var async: AsyncMode = .never
    /// Overrides the upstream's request_timeout.
    public var requestTimeout: Duration?
    /// Tokens taken from the partner's bucket.
    public var cost = 1
    /// nil for methods other than POST and PATCH.
    public var idempotency: IdempotencyMode?
    /// A share of partners sent to another upstream (SPEC §7).
    public var canary: Canary?
    /// `dedupe:` on an async route: how long after its accept a succeeded task still answers an
    /// identical request (SPEC §9); nil = every request is a task of its own.
    public var dedupe: Duration?
    /// `cache:` on a GET route: answers kept in the store and served to later requests (SPEC §9).
    public var cache: RouteCache?
    /// `slo:` — latency targets by quantile (SPEC §10); nil = none, nothing exported.
    public var slo: RouteSLO?
    public var location: SourceLocation

    /// `canary:` — partners sent to another upstream instead of the route's own.
    public struct Canary: Sendable, Equatable {
        public var upstream: String
        /// Share of partners (0…1), by a stable hash of the partner id.
        public var share: Double
        /// Partners always on the canary (while it is not aborted).
        public var partners: [String]
        /// Where each of `partners` is written (checked against the partner files).
        public var partnerLocations: [SourceLocation]
        /// When the canary is given up: its 5xx and timeout share over its last `minCalls` calls.
        public var abortOn: AbortRule?

        public struct AbortRule: Sendable, Equatable {
            public var errorRate: Double
            public var minCalls: Int
        }
    }
}

/// `routes.yaml` as a whole.
public struct RoutesPolicy: Sendable, Equatable {
    public var defaultVersion: String
    /// In file order.
    public var versions: [APIVersion]
    public var routes: [RoutePolicy]

    public func version(named name: String) -> APIVersion? {
        versions.first { $0.name == name }
    }
}

extension RoutesPolicy {
    static let allowedMethods: Set<String> = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    /// Reads routes.yaml. `upstreams` holds the declared upstream names, nil when upstreams.yaml
    /// could not be read (then routes are not cross-checked against it).
    static func read(_ root: YAMLValue, upstreams: Set<String>?) -> (routes: RoutesPolicy?, declaredVersions: Set<String>) {
        guard let file = root.mapping("routes.yaml") else { return (nil, []) }
        let defaultValue = file.required("default_version")
        let defaultVersion = defaultValue?.string("default_version")
        let versionEntries = file.required("versions")?.mapping("versions")
        let routeItems = file.required("routes")?.sequence("routes") ?? []
        file.finish()

        var versions: [APIVersion] = []
        for entry in versionEntries?.namedEntries ?? [] {
            guard APIVersionName.isValid(entry.name) else {
                entry.key.report("version name '\(entry.name)' must look like v1 or v2 (a 'v' then a digit, then letters, digits, '.', '-')")
                continue
            }
            if let version = readVersion(entry.name, entry.value) { versions.append(version) }
        }
        if versionEntries?.namedEntries.isEmpty == true { versionEntries?.value.report("versions must name at least one version") }
        let versionNames = Set(versionEntries?.namedEntries.map(\.name) ?? [])
        if let defaultVersion, let defaultValue, !versionNames.contains(defaultVersion) {
            defaultValue.report("default_version '\(defaultVersion)' is not one of the versions")
        }

        var routes: [RoutePolicy] = []
        var firstRouteById: [String: SourceLocation] = [:]
        var firstRouteByShape: [String: String] = [:]
        for item in routeItems {
            guard let route = readRoute(item, upstreams: upstreams, versionNames: versionNames) else { continue }
            if let first = firstRouteById[route.id] {
                item.report("route id '\(route.id)' is already used at \(first)")
                continue
            }
            firstRouteById[route.id] = item.location
            for version in route.versions {
                let key = "\(version) \(route.method) \(route.path.shape)"
                if let other = firstRouteByShape[key] {
                    item.report("route '\(route.id)': \(route.method) \(route.path) in \(version) is already served by route '\(other)'")
                } else {
                    firstRouteByShape[key] = route.id
                }
            }
            routes.append(route)
        }
        guard let defaultVersion else { return (nil, versionNames) }
        return (RoutesPolicy(defaultVersion: defaultVersion, versions: versions, routes: routes), versionNames)
    }

    private static func readVersion(_ name: String, _ value: YAMLValue) -> APIVersion? {
        let context = "version '\(name)'"
        guard let map = value.mapping(context) else { return nil }
        let status = map.required("status")?.oneOf(APIVersion.Status.self, "\(context) status")
        func date(_ key: String) -> (Date, YAMLValue)? {
            guard let item = map.optional(key), let text = item.string("\(context) \(key)") else { return nil }
            guard let date = PolicyValueParser.date(text) else {
                item.report("\(context) \(key) must be a date like 2026-10-01, got '\(text)'")
                return nil
            }
            return (date, item)
        }
        let deprecatedAt = date("deprecated_at")
        let sunset = date("sunset")
        map.finish()
        guard let status else { return nil }
        if status == .deprecated && deprecatedAt == nil && !map.contains("deprecated_at") {
            value.report("\(context) is deprecated but has no deprecated_at date")
        }
        if let (deprecated, _) = deprecatedAt, let (sunsetDate, sunsetValue) = sunset, sunsetDate < deprecated {
            sunsetValue.report("\(context) sunset is before its deprecated_at date")
        }
        return APIVersion(name: name, status: status, deprecatedAt: deprecatedAt?.0, sunset: sunset?.0)
    }

    private static func readRoute(_ item: YAMLValue, upstreams: Set<String>?, versionNames: Set<String>) -> RoutePolicy? {
        guard let map = item.mapping("a route") else { return nil }
        let id = map.required("id")?.string("route id")
        let context = "route '\(id ?? "?")'"
        if let id, !PolicyNames.isValid(id) { map.optional("id")?.report(PolicyNames.problem("route id", id)) }

        let versionList = map.required("versions")?.stringList("\(context) versions")
        for (name, value) in versionList ?? [] where !versionNames.contains(name) {
            value.report("\(context) names unknown version '\(name)'")
        }
        if versionList?.isEmpty == true { map.optional("versions")?.report("\(context) versions must not be empty") }

        let methodValue = map.required("method")
        let method = methodValue?.string("\(context) method")
        if let method, let methodValue, !allowedMethods.contains(method) {
            methodValue.report("\(context) method must be one of \(allowedMethods.sorted().joined(separator: ", ")), got '\(method)'")
        }

        let path = map.required("path").flatMap { readTemplate($0, "\(context) path") }
        let upstreamValue = map.required("upstream")
        let upstream = upstreamValue?.string("\(context) upstream")
        if let upstream, let upstreamValue, let upstreams, !upstreams.contains(upstream) {
            upstreamValue.report("\(context) names unknown upstream '\(upstream)'")
        }
        let upstreamPathValue = map.optional("upstream_path")
        let upstreamPath = upstreamPathValue.flatMap { readTemplate($0, "\(context) upstream_path") }
        if let path, let upstreamPath, let upstreamPathValue {
            for name in upstreamPath.parameterNames where !path.parameterNames.contains(name) {
                upstreamPathValue.report("\(context) upstream_path uses {\(name)}, which path does not capture")
            }
        }
        let async = map.optional("async")?.oneOf(RoutePolicy.AsyncMode.self, "\(context) async")
        let timeout = map.optional("request_timeout")?.duration("\(context) request_timeout")
        let cost = map.optional("cost")?.int("\(context) cost", min: 1, max: 1_000_000)
        let idempotencyValue = map.optional("idempotency")
        let idempotency = idempotencyValue?.oneOf(RoutePolicy.IdempotencyMode.self, "\(context) idempotency")
        let canary = map.optional("canary").flatMap { readCanary($0, route: upstream, upstreams: upstreams, context: "\(context) canary") }
        let dedupeValue = map.optional("dedupe")
        let dedupe = dedupeValue?.duration("\(context) dedupe")
        let cacheValue = map.optional("cache")
        let cache = cacheValue.flatMap { RouteCache.read($0, context: "\(context) cache") }
        let slo = map.optional("slo").flatMap { RouteSLO.read($0, context: "\(context) slo") }
        map.finish()
        if cache != nil, let method, method != "GET", method != "HEAD", let cacheValue {
            cacheValue.report("\(context) cache applies to GET and HEAD routes only, not \(method)")
        }
        if dedupe != nil, (async ?? .never) == .never, let dedupeValue {
            dedupeValue.report("\(context) dedupe applies to async routes only (async: always or on-request)")
        }

        let bodyMethod = method == "POST" || method == "PATCH"
        if idempotency != nil, !bodyMethod, let method, let idempotencyValue {
            idempotencyValue.report("\(context) idempotency applies to POST and PATCH only, not \(method)")
        }
        guard let id, let versionList, let method, allowedMethods.contains(method), let path, let upstream else { return nil }
        return RoutePolicy(
            id: id,
            versions: versionList.map(\.0),
            method: method,
            path: path,
            upstream: upstream,
            upstreamPath: upstreamPath,
            async: async ?? .never,
            requestTimeout: timeout,
            cost: cost ?? 1,
            idempotency: bodyMethod ? (idempotency ?? .optional) : nil,
            canary: canary,
            dedupe: (async ?? .never) == .never ? nil : dedupe,
            cache: method == "GET" || method == "HEAD" ? cache : nil,
            slo: slo,
            location: item.location
        )
    }

    private static func readCanary(_ value: YAMLValue, route: String?, upstreams: Set<String>?, context: String) -> RoutePolicy.Canary? {
        guard let map = value.mapping(context) else { return nil }
        let upstreamValue = map.required("upstream")
        let upstream = upstreamValue?.string("\(context) upstream")
        if let upstream, let upstreamValue {
            if let upstreams, !upstreams.contains(upstream) {
                upstreamValue.report("\(context) names unknown upstream '\(upstream)'")
            } else if upstream == route {
                upstreamValue.report("\(context) upstream '\(upstream)' is the route's own upstream")
            }
        }
        let share = map.optional("share")?.percentage("\(context) share")
        let partners = map.optional("partners")?.stringList("\(context) partners")
        var abortOn: RoutePolicy.Canary.AbortRule?
        if let abortMap = map.optional("abort_on")?.mapping("\(context) abort_on") {
            let rate = abortMap.required("error_rate")?.percentage("\(context) abort_on error_rate")
            let minCalls = abortMap.required("min_calls")?.int("\(context) abort_on min_calls", min: 1, max: 100_000)
            abortMap.finish()
            if let rate, let minCalls { abortOn = .init(errorRate: rate, minCalls: minCalls) }
        }
        map.finish()
        guard let upstream, upstream != route else { return nil }
        return RoutePolicy.Canary(
            upstream: upstream, share: share ?? 0, partners: partners?.map(\.0) ?? [], partnerLocations: partners?.map(\.1.location) ?? [], abortOn: abortOn
        )
    }

    private static func readTemplate(_ value: YAMLValue, _ context: String) -> PathTemplate? {
        guard let text = value.string(context) else { return nil }
        switch PathTemplate.parse(text) {
        case .success(let template): return template
        case .failure(let problem):
            value.report("\(context): \(problem.message)")
            return nil
        }
    }
}

/// Version names: `v` then a digit, then letters, digits, `.` or `-` (`v1`, `v2`, `v3-beta`).
public enum APIVersionName {
    public static func isValid<S: StringProtocol>(_ name: S) -> Bool {
        var count = 0
        for byte in name.utf8 {
            count += 1
            guard count <= 32 else { return false }
            switch count {
            case 1: guard byte == UInt8(ascii: "v") else { return false }
            case 2: guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return false }
            default: guard isAlphanumericASCII(byte) || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-") else { return false }
            }
        }
        return count >= 2
    }
}
