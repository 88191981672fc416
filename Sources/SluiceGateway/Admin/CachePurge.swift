import SluiceCore
import SluiceStore

/// Removes a cached route's entries (SPEC §9 Purge): all of them, or one partner's. Behind
/// `DELETE /admin/cache` and `sluice cache purge`.
public struct CachePurge: Sendable {
    /// What is wrong with a purge request.
    public enum Refusal: Error, Equatable, CustomStringConvertible {
        case missingRoute
        case unknownRoute(String)
        case notCached(String)
        case unknownPartner(String)

        public var description: String {
            switch self {
            case .missingRoute: "route is required (a route id from routes.yaml)"
            case .unknownRoute(let route): "no route has the id '\(route)'"
            case .notCached(let route): "route '\(route)' has no cache: block"
            case .unknownPartner(let partner): "no partner has the id '\(partner)'"
            }
        }
    }

    /// A purge drops the purging gateway's near copies at once; the other gateways on the store
    /// stop answering from theirs within this.
    public static let reachesRunningGatewaysWithin = RedisStore.nearCacheHold

    let policy: PolicySet
    let store: any ResponseCacheStore

    /// Checks the request against the policies; the owner to purge (nil: every owner).
    func owner(route: String?, partner: String?) throws(Refusal) -> (route: String, owner: String?) {
        guard let route, !route.isEmpty else { throw .missingRoute }
        guard let policy = self.policy.routes.routes.first(where: { $0.id == route }) else { throw .unknownRoute(route) }
        guard let cache = policy.cache else { throw .notCached(route) }
        guard let partner else { return (route, nil) }
        guard self.policy.partners.contains(where: { $0.id == partner }) else { throw .unknownPartner(partner) }
        // A shared route keeps one copy for every partner: purging "a partner's" removes it.
        return (route, cache.scope == .shared ? CacheEntryKey.sharedOwner : partner)
    }

    /// Purges and returns how many entries went.
    public func purge(route: String?, partner: String?) async throws -> Int {
        let (route, owner) = try owner(route: route, partner: partner)
        return try await store.purgeCache(route: route, owner: owner)
    }

    /// Connects to the Redis store the policies in `directory` name (the CLI's way in); nil
    /// with the embedded store (its cache lives in the running gateway).
    public static func open(policiesDirectory directory: String, environment: [String: String]) throws -> (CachePurge, close: @Sendable () async -> Void)? {
        guard let (policy, store, client) = try OpsStore.open(policiesDirectory: directory, environment: environment) else { return nil }
        return (CachePurge(policy: policy, store: store), { await client.shutdown() })
    }
}
