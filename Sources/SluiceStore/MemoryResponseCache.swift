public import NIOCore
import SluiceCore
import Synchronization

/// The embedded store's response cache: bounded by entries and bytes, the least recently used
/// entry evicted first (a doubly linked list over array slots, so a hit moves one node and
/// allocates nothing), expired entries dropped when met. Fill locks expire like Redis keys do.
final class ResponseCacheTable: Sendable {
    /// The bounds when the gateway does not set others.
    static let defaultMaxEntries = 10_000
    static let defaultMaxBytes = 256 << 20

    private struct Node {
        var key: CacheEntryKey
        var response: CachedResponse
        var expires: Int64
        var bytes: Int
        var newer: Int?
        var older: Int?
    }

    private struct State {
        var slots: [Node?] = []
        var free: [Int] = []
        var index: [CacheEntryKey: Int] = [:]
        var newest: Int?
        var oldest: Int?
        var bytes = 0
        var locks: [CacheEntryKey: Int64] = [:]

        mutating func unlink(_ slot: Int) {
            guard let node = slots[slot] else { return }
            if let newer = node.newer { slots[newer]?.older = node.older } else { newest = node.older }
            if let older = node.older { slots[older]?.newer = node.newer } else { oldest = node.newer }
        }

        mutating func pushNewest(_ slot: Int) {
            slots[slot]?.older = newest
            slots[slot]?.newer = nil
            if let newest { slots[newest]?.newer = slot }
            newest = slot
            if oldest == nil { oldest = slot }
        }

        mutating func remove(_ slot: Int) {
            guard let node = slots[slot] else { return }
            unlink(slot)
            index[node.key] = nil
            bytes -= node.bytes
            slots[slot] = nil
            free.append(slot)
        }
    }

    private let state = Mutex(State())
    private let clock: EpochClock
    let maxEntries: Int
    let maxBytes: Int

    init(clock: @escaping EpochClock, maxEntries: Int = defaultMaxEntries, maxBytes: Int = defaultMaxBytes) {
        self.clock = clock
        self.maxEntries = maxEntries
        self.maxBytes = maxBytes
    }

    func get(_ key: CacheEntryKey) -> CachedResponse? {
        let now = clock()
        return state.withLock { state in
            guard let slot = state.index[key], let node = state.slots[slot] else { return nil }
            guard node.expires > now else {
                state.remove(slot)
                return nil
            }
            state.unlink(slot)
            state.pushNewest(slot)
            return node.response
        }
    }

    func put(_ response: CachedResponse, at key: CacheEntryKey) {
        let now = clock()
        let bytes = response.body.count + response.headers.reduce(256) { $0 + $1.name.utf8.count + $1.value.utf8.count }
        guard bytes <= maxBytes else { return }
        state.withLock { state in
            if let slot = state.index[key] { state.remove(slot) }
            while state.index.count >= maxEntries || state.bytes + bytes > maxBytes, let oldest = state.oldest { state.remove(oldest) }
            let node = Node(key: key, response: response, expires: now + response.keepMilliseconds, bytes: bytes)
            let slot: Int
            if let reused = state.free.popLast() {
                slot = reused
                state.slots[slot] = node
            } else {
                slot = state.slots.count
                state.slots.append(node)
            }
            state.index[key] = slot
            state.bytes += bytes
            state.pushNewest(slot)
        }
    }

    func takeLock(_ key: CacheEntryKey, milliseconds: Int64) -> Bool {
        let now = clock()
        return state.withLock { state in
            if let until = state.locks[key], until > now { return false }
            if state.locks.count > 4 * maxEntries { state.locks = state.locks.filter { $0.value > now } }
            state.locks[key] = now + milliseconds
            return true
        }
    }

    func releaseLock(_ key: CacheEntryKey) {
        _ = state.withLock { $0.locks.removeValue(forKey: key) }
    }

    func purge(route: String, owner: String?) -> Int {
        state.withLock { state in
            let slots = state.index.filter { $0.key.route == route && (owner == nil || $0.key.owner == owner) }.map(\.value)
            for slot in slots { state.remove(slot) }
            return slots.count
        }
    }

    /// Entries and bytes held now (tests of the bounds).
    var usage: (entries: Int, bytes: Int) { state.withLock { ($0.index.count, $0.bytes) } }
}

extension MemoryStore: ResponseCacheStore {
    public func lookUpResponse(
        _ key: CacheEntryKey, lockFor: Duration?, on eventLoop: any EventLoop, completion: @escaping (Result<CacheLookup, any Error>) -> Void
    ) {
        if let entry = responses.get(key) { return completion(.success(CacheLookup(entry: entry, locked: false))) }
        completion(.success(CacheLookup(entry: nil, locked: lockFor.map { responses.takeLock(key, milliseconds: $0.milliseconds) } ?? false)))
    }

    public func storeResponse(
        _ response: CachedResponse, at key: CacheEntryKey, releasingLock: Bool, on eventLoop: any EventLoop,
        completion: @escaping (Result<Void, any Error>) -> Void
    ) {
        responses.put(response, at: key)
        if releasingLock { responses.releaseLock(key) }
        completion(.success(()))
    }

    public func takeFillLock(_ key: CacheEntryKey, for duration: Duration, on eventLoop: any EventLoop, completion: @escaping (Result<Bool, any Error>) -> Void) {
        completion(.success(responses.takeLock(key, milliseconds: duration.milliseconds)))
    }

    public func releaseFillLock(_ key: CacheEntryKey, on eventLoop: any EventLoop) {
        responses.releaseLock(key)
    }

    public func purgeCache(route: String, owner: String?) async throws -> Int {
        responses.purge(route: route, owner: owner)
    }
}
