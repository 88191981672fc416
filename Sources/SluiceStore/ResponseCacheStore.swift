public import Foundation
public import NIOCore
public import SluiceCore

/// Where a cached answer lives: its route, whose it is (a partner id, or `*` for a route whose
/// scope is `shared`) and the request's `CacheKey`. Purges go by route and owner.
public struct CacheEntryKey: Sendable, Hashable {
    public let route: String
    public let owner: String
    /// `CacheKey.make(…)`: 64 hex characters.
    public let hash: String

    public static let sharedOwner = "*"

    public init(route: String, owner: String, hash: String) {
        self.route = route
        self.owner = owner
        self.hash = hash
    }
}

/// An upstream answer as the cache keeps it (SPEC §9).
public struct CachedResponse: Sendable, Equatable, Codable {
    public var status: Int
    /// The upstream's headers, less hop-by-hop ones (the gateway's own are added when it answers).
    public var headers: [TaskHeader]
    public var body: Data
    /// When the answer arrived (epoch ms).
    public var storedAt: Int64
    /// The upstream's `Age` when it arrived (ms).
    public var initialAge: Int64
    public var freshness: CachePolicy.Freshness
    /// The upstream's `Vary` names (lowercase, sorted) and the storing request's values of them:
    /// the entry answers only requests with the same values.
    public var varyNames: [String]
    public var varyValues: [String?]

    public init(
        status: Int, headers: [TaskHeader], body: Data, storedAt: Int64, initialAge: Int64, freshness: CachePolicy.Freshness,
        varyNames: [String] = [], varyValues: [String?] = []
    ) {
        self.status = status
        self.headers = headers
        self.body = body
        self.storedAt = storedAt
        self.initialAge = initialAge
        self.freshness = freshness
        self.varyNames = varyNames
        self.varyValues = varyValues
    }

    /// An upstream answer that arrived at `now`; its `Age` header is its initial age.
    public static func arriving(
        status: Int, headers: [TaskHeader], body: Data, at now: Int64, freshness: CachePolicy.Freshness, varyNames: [String], varyValues: [String?]
    ) -> CachedResponse {
        let age = headers.first { $0.name.lowercased() == "age" }.flatMap { Int64($0.value) }.map { $0 * 1_000 } ?? 0
        return CachedResponse(
            status: status, headers: headers, body: body, storedAt: now, initialAge: age, freshness: freshness, varyNames: varyNames, varyValues: varyValues
        )
    }

    /// Its age at `now` (ms): the upstream's `Age` when it arrived plus the time since.
    public func age(at now: Int64) -> Int64 {
        CachePolicy.age(storedAt: storedAt, initialAge: initialAge, now: now)
    }

    /// The value of header `name` (lowercase), if the answer has it.
    public func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name }?.value
    }

    /// How long the store keeps it: its freshness left plus the longer stale window and, when it
    /// has a validator (`ETag`, `Last-Modified`), as long again as it was fresh (at least a
    /// minute) to be revalidated with a 304 rather than fetched whole (at least 1 ms).
    public var keepMilliseconds: Int64 {
        let revalidation = header("etag") != nil || header("last-modified") != nil ? max(freshness.lifetime, 60_000) : 0
        return max(1, freshness.lifetime - initialAge + max(freshness.staleWhileRevalidate, freshness.staleIfError, revalidation))
    }
}

extension CachedResponse: StoredAsJSON {}

/// The shared response cache (SPEC §9): entries every instance reads, a short lock per key so
/// that concurrent misses across instances make one upstream call, and purges. The request-path
/// operations take an event loop and complete there, exactly once.
public protocol ResponseCacheStore: Sendable {
    /// The entry at `key` (nil when there is none or it expired); when there is none and
    /// `lockFor` is given, the key's fill lock is taken for that long in the same step if nobody
    /// holds it (`locked`: the caller now holds it, and calls the upstream and stores).
    func lookUpResponse(
        _ key: CacheEntryKey, lockFor: Duration?, on eventLoop: any EventLoop, completion: @escaping (Result<CacheLookup, any Error>) -> Void
    )

    /// Stores (or replaces) the entry, kept for `response.keepMilliseconds`; with
    /// `releasingLock`, gives the key's fill lock back in the same step.
    func storeResponse(
        _ response: CachedResponse, at key: CacheEntryKey, releasingLock: Bool, on eventLoop: any EventLoop,
        completion: @escaping (Result<Void, any Error>) -> Void
    )

    /// Takes the key's fill lock for `duration` when nobody holds it: true for the taker, who
    /// then calls the upstream and stores the answer; the others wait for the entry.
    func takeFillLock(_ key: CacheEntryKey, for duration: Duration, on eventLoop: any EventLoop, completion: @escaping (Result<Bool, any Error>) -> Void)

    /// Gives the fill lock back early (the answer was stored, or could not be).
    func releaseFillLock(_ key: CacheEntryKey, on eventLoop: any EventLoop)

    /// Removes the route's entries (only `owner`'s when given); returns how many.
    func purgeCache(route: String, owner: String?) async throws -> Int
}

/// What a lookup found: the entry, or none and whether the caller took the fill lock.
public struct CacheLookup: Sendable, Equatable {
    public let entry: CachedResponse?
    public let locked: Bool

    public init(entry: CachedResponse?, locked: Bool) {
        self.entry = entry
        self.locked = locked
    }
}

extension ResponseCacheStore {
    /// The entry at `key` (no lock taken).
    public func cachedResponse(_ key: CacheEntryKey, on eventLoop: any EventLoop, completion: @escaping (Result<CachedResponse?, any Error>) -> Void) {
        lookUpResponse(key, lockFor: nil, on: eventLoop) { completion($0.map(\.entry)) }
    }

    /// `cachedResponse(…, on:, completion:)` on `eventLoop`, async.
    public func cachedResponse(_ key: CacheEntryKey, on eventLoop: any EventLoop) async throws -> CachedResponse? {
        try await eventLoop.run { cachedResponse(key, on: $0, completion: $1) }
    }

    /// `lookUpResponse(…, on:, completion:)` on `eventLoop`, async.
    public func lookUpResponse(_ key: CacheEntryKey, lockFor: Duration?, on eventLoop: any EventLoop) async throws -> CacheLookup {
        try await eventLoop.run { lookUpResponse(key, lockFor: lockFor, on: $0, completion: $1) }
    }

    /// `storeResponse(…, on:, completion:)` on `eventLoop`, async.
    public func storeResponse(_ response: CachedResponse, at key: CacheEntryKey, releasingLock: Bool = false, on eventLoop: any EventLoop) async throws {
        try await eventLoop.run { storeResponse(response, at: key, releasingLock: releasingLock, on: $0, completion: $1) }
    }

    /// `takeFillLock(…, on:, completion:)` on `eventLoop`, async.
    public func takeFillLock(_ key: CacheEntryKey, for duration: Duration, on eventLoop: any EventLoop) async throws -> Bool {
        try await eventLoop.run { takeFillLock(key, for: duration, on: $0, completion: $1) }
    }
}
