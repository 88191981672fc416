import Foundation
import NIOCore
import NIOPosix
import SluiceCore
@testable import SluiceStore
import Testing
import TestSupport

/// Every store keeps the response cache's contract (SPEC §9): entries round-trip whole (binary
/// bodies, headers, freshness, vary values), one fill lock per key, purges by route and owner.
struct ResponseCacheStoreContractTests {
    private let eventLoop = MultiThreadedEventLoopGroup.singleton.next()

    private func response(_ body: String, storedAt: Int64) -> CachedResponse {
        CachedResponse(
            status: 200, headers: [.init("Content-Type", "application/json"), .init("ETag", "\"v1\"")], body: Data(body.utf8) + Data([0, 255]),
            storedAt: storedAt, initialAge: 2_000, freshness: .init(lifetime: 60_000, staleWhileRevalidate: 5_000, staleIfError: 300_000),
            varyNames: ["accept-language"], varyValues: ["de"]
        )
    }

    private func key(_ route: String = "get-order", owner: String = "acme", _ path: String = "/v2/orders/1") -> CacheEntryKey {
        CacheEntryKey(route: route, owner: owner, hash: CacheKey.make(route: route, partner: owner, pathAndQuery: path, vary: []))
    }

    @Test(arguments: StoreKind.allCases)
    func entriesRoundTripAndAreReplaced(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            #expect(try await store.cachedResponse(key(), on: eventLoop) == nil)
            let first = response("{\"id\":1}", storedAt: clock.now)
            try await store.storeResponse(first, at: key(), on: eventLoop)
            #expect(try await store.cachedResponse(key(), on: eventLoop) == first)
            #expect(try await store.cachedResponse(key(owner: "globex"), on: eventLoop) == nil, "another partner's key")
            let second = response("{\"id\":2}", storedAt: clock.now + 1)
            try await store.storeResponse(second, at: key(), on: eventLoop)
            #expect(try await store.cachedResponse(key(), on: eventLoop) == second)
        }
    }

    /// A lookup that finds nothing takes the fill lock in the same step (once); storing with
    /// `releasingLock` gives it back; a lookup that finds the entry takes nothing.
    @Test(arguments: StoreKind.allCases)
    func lookupsTakeTheFillLockWhenTheyMiss(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            #expect(try await store.lookUpResponse(key(), lockFor: .seconds(30), on: eventLoop) == CacheLookup(entry: nil, locked: true))
            #expect(try await store.lookUpResponse(key(), lockFor: .seconds(30), on: eventLoop) == CacheLookup(entry: nil, locked: false))
            #expect(try await store.lookUpResponse(key(), lockFor: nil, on: eventLoop) == CacheLookup(entry: nil, locked: false))
            let entry = response("{}", storedAt: clock.now)
            try await store.storeResponse(entry, at: key(), releasingLock: true, on: eventLoop)
            #expect(try await store.lookUpResponse(key(), lockFor: .seconds(30), on: eventLoop) == CacheLookup(entry: entry, locked: false))
            #expect(try await store.takeFillLock(key(), for: .seconds(30), on: eventLoop), "the store released the lock")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func oneFillLockPerKeyUntilReleased(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            #expect(try await store.takeFillLock(key(), for: .seconds(30), on: eventLoop))
            #expect(try await store.takeFillLock(key(), for: .seconds(30), on: eventLoop) == false)
            #expect(try await store.takeFillLock(key(owner: "globex"), for: .seconds(30), on: eventLoop))
            store.releaseFillLock(key(), on: eventLoop)
            try await eventually("the lock is released") { try await store.takeFillLock(key(), for: .seconds(30), on: eventLoop) }
        }
    }

    @Test(arguments: StoreKind.allCases)
    func purgesGoByRouteAndOwner(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let keys = [
                key(owner: "acme"), key(owner: "acme", "/v2/orders/2"), key(owner: "globex"), key(owner: CacheEntryKey.sharedOwner),
                key("list-orders", owner: "acme"),
            ]
            for key in keys { try await store.storeResponse(response("x", storedAt: clock.now), at: key, on: eventLoop) }
            #expect(try await store.purgeCache(route: "get-order", owner: "acme") == 2)
            #expect(try await store.cachedResponse(keys[0], on: eventLoop) == nil)
            #expect(try await store.cachedResponse(keys[2], on: eventLoop) != nil)
            #expect(try await store.purgeCache(route: "get-order", owner: CacheEntryKey.sharedOwner) == 1)
            #expect(try await store.cachedResponse(keys[2], on: eventLoop) != nil, "* purges the shared copy, not every owner")
            #expect(try await store.purgeCache(route: "get-order", owner: nil) == 1)
            #expect(try await store.cachedResponse(keys[2], on: eventLoop) == nil)
            #expect(try await store.cachedResponse(keys[4], on: eventLoop) != nil, "another route is untouched")
        }
    }
}

/// The embedded store's cache is bounded: the least recently used entries go first, by count
/// and by bytes, and expired entries are not answered.
struct MemoryResponseCacheTests {
    private func entry(bytes: Int, keep: Int64 = 60_000) -> CachedResponse {
        CachedResponse(status: 200, headers: [], body: Data(count: bytes), storedAt: 0, initialAge: 0, freshness: .init(lifetime: keep, staleWhileRevalidate: 0, staleIfError: 0))
    }

    private func key(_ n: Int) -> CacheEntryKey { CacheEntryKey(route: "r", owner: "p", hash: String(n)) }

    @Test func leastRecentlyUsedEntriesAreEvictedByCountAndBytes() {
        let clock = ManualClock(.present)
        let table = ResponseCacheTable(clock: clock.epochClock, maxEntries: 3, maxBytes: 10_000)
        for n in 0..<3 { table.put(entry(bytes: 100), at: key(n)) }
        #expect(table.get(key(0)) != nil)  // 0 is now the most recently used
        table.put(entry(bytes: 100), at: key(3))
        #expect(table.get(key(1)) == nil, "the least recently used went")
        #expect(table.get(key(0)) != nil && table.get(key(2)) != nil && table.get(key(3)) != nil)
        table.put(entry(bytes: 9_500), at: key(4))
        #expect(table.usage.bytes <= 10_000)
        #expect(table.get(key(4)) != nil)
        #expect(table.usage.entries < 3, "bytes evicted older entries")
        table.put(entry(bytes: 20_000), at: key(5))
        #expect(table.get(key(5)) == nil, "an entry larger than the whole cache is not kept")
    }

    @Test func expiredEntriesAreNotAnswered() {
        let clock = ManualClock(.present)
        let table = ResponseCacheTable(clock: clock.epochClock)
        table.put(entry(bytes: 10, keep: 1_000), at: key(1))
        clock.advance(999)
        #expect(table.get(key(1)) != nil)
        clock.advance(1)
        #expect(table.get(key(1)) == nil)
        #expect(table.usage.entries == 0)
    }
}

/// The stored form of an entry: read on every hit, so it must round-trip anything an upstream
/// sends and refuse anything else.
struct CachedResponseEncodingTests {
    private func entry(_ body: Data, headers: [TaskHeader] = [.init("ETag", "\"a:1\""), .init("X-Note", "12:34 tab\there")]) -> CachedResponse {
        CachedResponse(
            status: 203, headers: headers, body: body, storedAt: 1_796_000_000_123, initialAge: 5_000,
            freshness: .init(lifetime: 30_000, staleWhileRevalidate: 0, staleIfError: 300_000), varyNames: ["accept-language", "x-tenant"],
            varyValues: ["de, en", nil]
        )
    }

    @Test func textAndBinaryBodiesRoundTrip() throws {
        for body in [Data("{\"price\":12.5,\"note\":\"1:2\"}".utf8), Data([0, 255, 254, 10, 58]), Data(), Data("äöü €".utf8)] {
            let original = entry(body)
            let decoded = try #require(CachedResponse(encoded: Array(original.encoded().utf8)))
            #expect(decoded == original)
        }
        #expect(entry(Data("{}".utf8)).encoded().hasSuffix("t{}"), "UTF-8 text is stored as is")
        #expect(entry(Data([255])).encoded().hasSuffix("b/w=="), "anything else as base64")
    }

    /// The exact bytes: entries written by one gateway version are read by the others.
    @Test func theStoredFormIsFixed() {
        #expect(
            entry(Data("{}".utf8)).encoded()
                == "2:C13:20313:17960000001234:50005:300001:06:3000001:24:ETag5:\"a:1\"6:X-Note14:12:34 tab\there1:215:accept-language6:de, en8:x-tenant-1:t{}"
        )
    }

    @Test func malformedEntriesAreRefused() {
        let good = Array(entry(Data("{}".utf8)).encoded().utf8)
        for cut in [0, 1, 3, 10, good.count / 2] { #expect(CachedResponse(encoded: good.prefix(cut)) == nil, "cut at \(cut)") }
        for bad in ["", "C2:xx", "2:C13:2001:1", "2:C199999999999:", "2:C1-5:", "{\"status\":200}"] {
            #expect(CachedResponse(encoded: Array(bad.utf8)) == nil, "\(bad)")
        }
        var binary = Array(entry(Data([255])).encoded().utf8)
        binary.append(UInt8(ascii: "!"))  // not base64 any more
        #expect(CachedResponse(encoded: binary) == nil)
    }
}
