import Foundation
import NIOCore
import NIOPosix
import SluiceCore
@testable import SluiceStore
import Testing
import TestSupport

/// The Redis store's near copies of cache entries: a fresh entry read once answers this loop
/// without Redis for at most `NearCacheEntries.holdMilliseconds`; this instance's purge drops
/// it at once, another instance's is seen when the hold ends; bounded by entries and bytes.
struct NearCacheTests {
    private let eventLoop = MultiThreadedEventLoopGroup.singleton.next()
    private let key = CacheEntryKey(route: "get-order", owner: "acme", hash: String(repeating: "a", count: 64))

    private func entry(storedAt: Int64, lifetime: Int64 = 60_000, bytes: Int = 2) -> CachedResponse {
        CachedResponse(
            status: 200, headers: [.init("ETag", "\"v1\"")], body: Data(repeating: 0x61, count: bytes), storedAt: storedAt, initialAge: 0,
            freshness: .init(lifetime: lifetime, staleWhileRevalidate: 0, staleIfError: 0)
        )
    }

    /// Two stores (as two gateways) on one Redis and key prefix, reading `clock`.
    private func withTwoInstances(_ body: (_ writer: RedisStore, _ reader: RedisStore, ManualClock) async throws -> Void) async throws {
        let clock = ManualClock(.present)
        let client = try await makeRedisClient()
        let prefix = "test-\(UUID().uuidString.prefix(8))"
        do {
            try await body(
                RedisStore(client: client, keyPrefix: prefix, clock: clock.epochClock), RedisStore(client: client, keyPrefix: prefix, clock: clock.epochClock), clock
            )
        } catch {
            await client.shutdown()
            throw error
        }
        await client.shutdown()
    }

    @Test func anotherInstancesPurgeIsSeenWhenTheHoldEnds() async throws {
        try await withTwoInstances { writer, reader, clock in
            let stored = entry(storedAt: clock.now)
            try await writer.storeResponse(stored, at: key, on: eventLoop)
            #expect(try await reader.cachedResponse(key, on: eventLoop) == stored)

            #expect(try await writer.purgeCache(route: "get-order", owner: nil) == 1)
            #expect(try await writer.cachedResponse(key, on: eventLoop) == nil, "the purging instance drops its copy at once")
            #expect(try await reader.cachedResponse(key, on: eventLoop) == stored, "the other answers from its copy, without Redis")
            clock.advance(NearCacheEntries.holdMilliseconds - 1)
            #expect(try await reader.cachedResponse(key, on: eventLoop) == stored)
            clock.advance(1)
            #expect(try await reader.cachedResponse(key, on: eventLoop) == nil, "after the hold, Redis is asked again")
        }
    }

    @Test func aCopyAnswersOnlyWhileItsEntryIsFresh() async throws {
        try await withTwoInstances { writer, reader, clock in
            let first = entry(storedAt: clock.now, lifetime: 300)
            try await writer.storeResponse(first, at: key, on: eventLoop)
            #expect(try await reader.cachedResponse(key, on: eventLoop) == first)
            let second = entry(storedAt: clock.now + 1, lifetime: 60_000)
            try await writer.storeResponse(second, at: key, on: eventLoop)
            #expect(try await reader.cachedResponse(key, on: eventLoop) == first, "held while fresh")
            clock.advance(300)
            #expect(try await reader.cachedResponse(key, on: eventLoop) == second, "stale: Redis decides, and the caller revalidates")
        }
    }

    @Test func copiesAreBoundedByEntriesAndBytes() {
        var near = NearCacheEntries()
        let now: Int64 = 1_000_000
        func key(_ n: Int) -> CacheEntryKey { CacheEntryKey(route: "r", owner: "p", hash: String(n)) }
        for n in 0..<NearCacheEntries.entryLimit { near.keep(entry(storedAt: now), at: key(n), now: now) }
        #expect(near.fresh(key(0), now: now) != nil)
        near.keep(entry(storedAt: now), at: key(-1), now: now)
        #expect(near.fresh(key(0), now: now) == nil, "full: the copies went")
        #expect(near.fresh(key(-1), now: now) != nil)

        let large = NearCacheEntries.byteLimit / 16
        near.keep(entry(storedAt: now, bytes: large + 1), at: key(1), now: now)
        #expect(near.fresh(key(1), now: now) == nil, "a body over a sixteenth of the bound is not copied")
        for n in 0..<16 { near.keep(entry(storedAt: now, bytes: large), at: key(100 + n), now: now) }
        #expect(near.fresh(key(115), now: now) != nil)
        #expect(near.fresh(key(100), now: now) == nil, "over the byte bound: the copies went")
        near.forget(route: "r", owner: "p")
        #expect(near.fresh(key(115), now: now) == nil)
    }
}
