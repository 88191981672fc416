public import NIOCore
import SluiceCore

/// The response cache on Redis. An entry is `PREFIX:{c:ROUTE:OWNER}:e:HASH` (the answer as
/// `CachedResponse.encoded()`, expiring with its freshness plus the longer stale window) and
/// its fill lock `PREFIX:{c:ROUTE:OWNER}:l:HASH` (`SET NX PX`). The hash tag is per route and
/// owner, so one partner's entries of one route share a slot and a route's entries spread over
/// its partners (a `shared` route's are one slot). Plain commands, no scripts: a lookup is
/// `GET` and, for a GET that may fill, `SET NX` of the lock in the same flush; a store is `SET`
/// then `DEL` of the lock; purges scan. Each event loop keeps near copies of the fresh entries
/// it read or stored (`NearCacheEntries`): a hot key's hits ask Redis about once a second per loop.
extension RedisStore: ResponseCacheStore {
    /// How long an event loop answers a fresh entry from its near copy before asking Redis
    /// again: another instance's purge or replacement of the entry is seen here within it.
    public static let nearCacheHold: Duration = .seconds(1)

    func cacheBase(route: String, owner: String) -> String { "\(keyPrefix):{c:\(route):\(owner)}" }
    func cacheEntryKey(_ key: CacheEntryKey) -> String { cacheKey(key, kind: "e") }
    func cacheLockKey(_ key: CacheEntryKey) -> String { cacheKey(key, kind: "l") }

    /// `cacheBase(…):KIND:HASH`, built in one string (each miss names two keys twice).
    private func cacheKey(_ key: CacheEntryKey, kind: String) -> String {
        var name = ""
        name.reserveCapacity(keyPrefix.utf8.count + key.route.utf8.count + key.owner.utf8.count + key.hash.utf8.count + 10)
        for part in [keyPrefix, ":{c:", key.route, ":", key.owner, "}:", kind, ":", key.hash] { name += part }
        return name
    }

    /// The near copies' clock: the injected one, else the wall clock.
    private var nearNow: Int64 { (clock ?? MemoryStore.wallClock)() }

    public func lookUpResponse(
        _ key: CacheEntryKey, lockFor: Duration?, on eventLoop: any EventLoop, completion: @escaping (Result<CacheLookup, any Error>) -> Void
    ) {
        let loop = loops[eventLoop]
        if let near = loop?.nearCache.fresh(key, now: nearNow) { return completion(.success(CacheLookup(entry: near, locked: false))) }
        let entryKey = cacheEntryKey(key)
        let read = bulk.send(["GET", entryKey], on: eventLoop)
        let found: EventLoopFuture<(entry: RedisReply, locked: Bool)>
        if let lockFor {
            // Plain commands in one flush rather than a script: Redis runs a client's pipelined
            // commands back to back, and a Lua call costs it several times the two commands.
            let lock = bulk.send(["SET", cacheLockKey(key), "1", "NX", "PX", String(max(1, lockFor.milliseconds))], on: eventLoop)
            found = read.and(lock).map { entry, lock in
                let locked = lock != .null
                // An entry answers: a lock taken beside it is given back at once.
                guard entry == .null || !locked else {
                    self.releaseFillLock(key, on: eventLoop)
                    return (entry, false)
                }
                return (entry, locked)
            }
        } else {
            found = read.map { ($0, false) }
        }
        found.assumeIsolatedUnsafeUnchecked().whenComplete { result in
            completion(result.flatMap { reply, locked in
                switch reply {
                case .null: .success(CacheLookup(entry: nil, locked: locked))
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
        // The lock goes after the entry on the same connection: a waiter sees the entry first.
        let stored = bulk.send(["SET", cacheEntryKey(key), response.encoded(), "PX", String(response.keepMilliseconds)], on: eventLoop)
        if releasingLock { releaseFillLock(key, on: eventLoop) }
        stored.assumeIsolatedUnsafeUnchecked().whenComplete { completion($0.map { _ in () }) }
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
