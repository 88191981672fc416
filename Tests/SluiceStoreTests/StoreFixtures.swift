import Foundation
import NIOPosix
import SluiceCore
@testable import SluiceStore
import Synchronization
import Testing
import TestSupport

enum StoreKind: String, CaseIterable, Sendable {
    /// The embedded store, one Redis, the primary of the shared Sentinel set, and the shared
    /// three-primary Redis Cluster.
    case memory, redis, sentinel, cluster
}

/// What both stores are: the contract suites run against this.
typealias StoreUnderTest = ClaimingAdmissionStore & TaskStore & WebhookStore & UsageStore & ResponseCacheStore

/// A fresh store of `kind` reading `clock`; Redis stores use the shared test Redis with a key
/// prefix of their own, so tests never see each other's keys.
func withStore(_ kind: StoreKind, clock: ManualClock, _ body: (any StoreUnderTest) async throws -> Void) async throws {
    switch kind {
    case .memory:
        try await body(MemoryStore(clock: clock.epochClock))
    case .redis, .sentinel, .cluster:
        let url: String? =
            switch kind {
            case .sentinel: try await SentinelSet.shared().url()
            case .cluster: try await ClusterSet.shared().url
            default: nil
            }
        let client = try await makeRedisClient(url: url)
        let store = RedisStore(client: client, keyPrefix: "test-\(UUID().uuidString.prefix(8))", clock: clock.epochClock)
        do {
            try await body(store)
        } catch {
            await client.shutdown()
            throw error
        }
        await client.shutdown()
    }
}

func makeRedisClient(url: String? = nil, tlsCA: String? = nil, timeout: Duration = .seconds(2)) async throws -> RedisClient {
    let text: String
    if let url { text = url } else { text = try await RedisServer.sharedURL() }
    return try RedisClient(url: try RedisURL.parse(text).get(), tlsCA: tlsCA, timeout: timeout, group: MultiThreadedEventLoopGroup.singleton)
}

/// Expects `key` to expire in what a TTL of `set`, given at or after `since`, leaves now: at
/// most `set`, at least `set` less the time since `since` (so a slow machine cannot fail it).
func expectTTL(
    _ key: String, on client: RedisClient, set: Duration, since: ContinuousClock.Instant, sourceLocation: Testing.SourceLocation = #_sourceLocation
) async throws {
    guard case .integer(let ttl) = try await client.send(["PTTL", key]) else { throw RedisError.protocolViolation("PTTL") }
    let elapsed = (ContinuousClock.now - since).milliseconds
    let bounds = (set.milliseconds - elapsed - 1)...set.milliseconds
    #expect(bounds.contains(ttl), "\(key) expires in \(ttl) ms, expected \(bounds)", sourceLocation: sourceLocation)
}
