public import NIOCore
import SluiceCore

/// The response cache on Redis. An entry is `PREFIX:{c:ROUTE:OWNER}:e:HASH` (the answer as
/// JSON, expiring with its freshness plus the longer stale window) and its fill lock
/// `PREFIX:{c:ROUTE:OWNER}:l:HASH` (`SET NX PX`). The hash tag is per route and owner, so one
/// partner's entries of one route share a slot and a route's entries spread over its
/// partners (a `shared` route's are one slot). Reads and writes are single commands on the
/// bulk client; purges scan. Each event loop keeps near copies of the fresh entries it read
/// or stored (`NearCacheEntries`): a hot key's hits ask Redis about once a second per loop.
extension RedisStore: ResponseCacheStore {
    /// How long an event loop answers a fresh entry from its near copy before asking Redis
    /// again: another instance's purge or replacement of the entry is seen here within it.
    public static let nearCacheHold: Duration = .seconds(1)

    func cacheBase(route: String, owner: String) -> String { "\(keyPrefix):{c:\(route):\(owner)}" }
    func cacheEntryKey(_ key: CacheEntryKey) -> String { "\(cacheBase(route: key.route, owner: key.owner)):e:\(key.hash)" }
    func cacheLockKey(_ key: CacheEntryKey) -> String { "\(cacheBase(route: key.route, owner: key.owner)):l:\(key.hash)" }

    /// The near copies' clock: the injected one, else the wall clock.
    private var nearNow: Int64 { (clock ?? MemoryStore.wallClock)() }

    public func lookUpResponse(
        _ key: CacheEntryKey, lockFor: Duration?, on eventLoop: any EventLoop, completion: @escaping (Result<CacheLookup, any Error>) -> Void
    ) {
        let loop = loops[eventLoop]
        if let near = loop?.nearCache.fresh(key, now: nearNow) { return completion(.success(CacheLookup(entry: near, locked: false))) }
        let reply: EventLoopFuture<RedisReply> =
            if let lockFor {
                bulk.evaluate(
                    CacheScripts.lookUp, keys: [cacheEntryKey(key), cacheLockKey(key)], arguments: [String(max(1, lockFor.milliseconds))], durable: false,
                    on: eventLoop
                )
            } else {
                bulk.send(["GET", cacheEntryKey(key)], on: eventLoop)
            }
        reply.assumeIsolatedUnsafeUnchecked().whenComplete { result in
            completion(result.flatMap { reply in
                switch reply {
                case .null: .success(CacheLookup(entry: nil, locked: false))
                case .integer(let locked): .success(CacheLookup(entry: nil, locked: locked == 1))
                case .string(let bytes):
                    CachedResponse(encoded: bytes).map { entry in
                        loop?.nearCache.keep(entry, at: key, now: self.nearNow)
                        return .success(CacheLookup(entry: entry, locked: false))
                    } ?? .failure(RedisError.protocolViolation("a cache entry that is not one"))
                default: .failure(RedisError.protocolViolation("unexpected cache reply \(reply)"))
                }
            })
        }
    }

    public func storeResponse(
        _ response: CachedResponse, at key: CacheEntryKey, releasingLock: Bool, on eventLoop: any EventLoop,
        completion: @escaping (Result<Void, any Error>) -> Void
    ) {
        loops.update(on: eventLoop) { $0.nearCache.keep(response, at: key, now: nearNow) }
        bulk.evaluate(
            CacheScripts.store, keys: [cacheEntryKey(key), cacheLockKey(key)],
            arguments: [response.encoded(), String(response.keepMilliseconds), releasingLock ? "1" : "0"], durable: false, on: eventLoop
        ).assumeIsolatedUnsafeUnchecked().whenComplete { completion($0.map { _ in () }) }
    }

    public func takeFillLock(_ key: CacheEntryKey, for duration: Duration, on eventLoop: any EventLoop, completion: @escaping (Result<Bool, any Error>) -> Void) {
        bulk.send(["SET", cacheLockKey(key), "1", "NX", "PX", String(max(1, duration.milliseconds))], on: eventLoop).assumeIsolatedUnsafeUnchecked().whenComplete {
            completion($0.map { $0 != .null })
        }
    }

    public func releaseFillLock(_ key: CacheEntryKey, on eventLoop: any EventLoop) {
        _ = bulk.send(["DEL", cacheLockKey(key)], on: eventLoop)
    }

    public func purgeCache(route: String, owner: String?) async throws -> Int {
        _ = await loops.collect { $0.nearCache.forget(route: route, owner: owner) }
        let tag = owner.map { $0 == CacheEntryKey.sharedOwner ? "\\*" : $0 } ?? "*"
        let pattern = "\(keyPrefix):{c:\(route):\(tag)}:e:*"
        var removed = 0
        // SCAN sees one node's keys: on a cluster, every primary is scanned.
        for node in try await bulk.keyHolders() {
            var cursor = "0"
            repeat {
                guard case .array(let page) = try await bulk.send(["SCAN", cursor, "MATCH", pattern, "COUNT", "1000"], at: node), page.count == 2,
                    case .string(let next) = page[0], case .array(let keys) = page[1]
                else { throw RedisError.protocolViolation("unexpected SCAN reply") }
                cursor = String(decoding: next, as: UTF8.self)
                let names = keys.compactMap { key -> String? in
                    guard case .string(let bytes) = key else { return nil }
                    return String(decoding: bytes, as: UTF8.self)
                }
                for name in names {
                    // One key per command: keys of different partners live in different slots.
                    if case .integer(let count) = try await bulk.send(["UNLINK", name]) { removed += Int(count) }
                }
            } while cursor != "0"
        }
        return removed
    }
}

/// The cache's scripts; both keys of each carry the same hash tag (one slot).
enum CacheScripts {
    /// KEYS: entry, fill lock. ARGV: lock ms. Returns the entry, else 1 when the lock was
    /// taken, 0 when someone holds it.
    static let lookUp = RedisScript(
        """
        local entry = redis.call('GET', KEYS[1])
        if entry then return entry end
        if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 1 end
        return 0
        """
    )

    /// KEYS: entry, fill lock. ARGV: the entry, how long to keep it (ms), '1' to release the lock.
    static let store = RedisScript(
        """
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        if ARGV[3] == '1' then redis.call('DEL', KEYS[2]) end
        return 1
        """
    )
}
