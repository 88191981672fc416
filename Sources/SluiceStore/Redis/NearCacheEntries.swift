import SluiceCore

/// One event loop's near copy of the response-cache entries it read from Redis or stored there
/// lately, so that a hot key's hits cost no round trip: a copy answers while its entry is fresh
/// and for at most `holdMilliseconds` after it was read, then Redis is asked again. Purges on
/// this instance drop the copies at once; another instance's purge (or a change of an entry
/// elsewhere) is seen here within `holdMilliseconds`. Bounded by entries and bytes: when full,
/// the expired copies go, and when that is not enough, all of them.
struct NearCacheEntries {
    /// How long a copy answers without asking Redis (ms).
    static let holdMilliseconds = RedisStore.nearCacheHold.milliseconds
    /// Copies per event loop.
    static let entryLimit = 1_024
    /// Body bytes per event loop.
    static let byteLimit = 16 << 20

    private var copies: [CacheEntryKey: (entry: CachedResponse, until: Int64)] = [:]
    private var bytes = 0

    /// The copy of `key` when it is still held and its entry is fresh at `now`.
    func fresh(_ key: CacheEntryKey, now: Int64) -> CachedResponse? {
        guard let copy = copies[key], now < copy.until, copy.entry.age(at: now) < copy.entry.freshness.lifetime else { return nil }
        return copy.entry
    }

    /// Keeps `entry` (read or stored at `now`) as `key`'s copy while it is fresh, else forgets the key.
    mutating func keep(_ entry: CachedResponse, at key: CacheEntryKey, now: Int64) {
        forget(key)
        let left = entry.freshness.lifetime - entry.age(at: now)
        guard left > 0, entry.body.count <= Self.byteLimit / 16 else { return }
        if copies.count >= Self.entryLimit || bytes + entry.body.count > Self.byteLimit { makeRoom(now: now) }
        copies[key] = (entry, now + min(Self.holdMilliseconds, left))
        bytes += entry.body.count
    }

    mutating func forget(_ key: CacheEntryKey) {
        if let old = copies.removeValue(forKey: key) { bytes -= old.entry.body.count }
    }

    /// Drops the copies of `route` (only `owner`'s when given).
    mutating func forget(route: String, owner: String?) {
        for key in copies.keys where key.route == route && (owner == nil || key.owner == owner) { forget(key) }
    }

    private mutating func makeRoom(now: Int64) {
        for (key, copy) in copies where copy.until <= now { forget(key) }
        if copies.count >= Self.entryLimit || bytes > Self.byteLimit / 2 {
            copies.removeAll(keepingCapacity: true)
            bytes = 0
        }
    }
}
