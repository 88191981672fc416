import NIOCore
import SluiceCore
@testable import SluiceStore
import Testing
import TestSupport

/// Every store keeps the same idempotency contract; each test runs against the embedded store
/// and real Redis, with the manual clock far in the past, at real time and far in the future.
struct IdempotencyStoreContractTests {
    private let lease: Duration = .seconds(60)
    private let retention: Duration = .seconds(86_400)

    private func record(status: Int = 201, body: String = "{\"order\":1}", kept: Bool = true) -> IdempotencyRecord {
        IdempotencyRecord(
            fingerprint: RequestFingerprint(
                target: RequestFingerprint.target(method: "POST", pathAndQuery: "/v2/orders?x=1"), body: BodyHasher().finalize()
            ),
            status: status, headers: [.init("Content-Type", "application/json"), .init("Location", "/orders/1")],
            body: Array(body.utf8), bodyKept: kept
        )
    }

    /// The first request claims the key; a concurrent duplicate finds it in progress with the time its claim has left.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func secondClaimFindsTheFirstInProgress(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            #expect(try await store.claim(partner: "acme", key: "k1", token: "a", lease: lease) == .claimed)
            clock.advance(15_000)
            #expect(try await store.claim(partner: "acme", key: "k1", token: "b", lease: lease) == .inProgress(retryAfterMilliseconds: 45_000))
        }
    }

    /// A renewed claim lasts its lease from the renewal, so a request that outlives its first
    /// lease keeps its key; a claim that is not the token's (another request's, a record) is
    /// left as it is.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func renewedClaimsOutliveTheirFirstLease(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            #expect(try await store.claim(partner: "acme", key: "long", token: "a", lease: lease) == .claimed)
            #expect(try await store.claim(partner: "acme", key: "other", token: "o", lease: lease) == .claimed)
            #expect(try await store.claim(partner: "acme", key: "done", token: "d", lease: lease) == .claimed)
            #expect(try await store.record(record(), partner: "acme", key: "done", token: "d", retention: retention))
            clock.advance(50_000)
            let renewals = [
                IdempotencyClaimRequest(key: "long", token: "a", lease: lease), IdempotencyClaimRequest(key: "other", token: "not-mine", lease: lease),
                IdempotencyClaimRequest(key: "done", token: "d", lease: lease), IdempotencyClaimRequest(key: "absent", token: "x", lease: lease),
            ]
            #expect(try await store.renewClaims(renewals, partner: "acme") == 1)
            clock.advance(50_000)  // 100 s after the claim: past its first lease, within the renewed one
            #expect(try await store.claim(partner: "acme", key: "long", token: "b", lease: lease) == .inProgress(retryAfterMilliseconds: 10_000))
            #expect(try await store.claim(partner: "acme", key: "other", token: "b", lease: lease) == .claimed, "not renewed: expired")
            #expect(try await store.claim(partner: "acme", key: "done", token: "b", lease: lease) == .completed(record()))
            #expect(try await store.record(record(), partner: "acme", key: "long", token: "a", retention: retention))
        }
    }

    /// Many claims at once: exactly one wins.
    @Test(arguments: StoreKind.allCases)
    func concurrentClaimsHaveOneWinner(_ kind: StoreKind) async throws {
        try await withStore(kind, clock: ManualClock(.present)) { (store: any StoreUnderTest) async throws in
            let claims = try await withThrowingTaskGroup(of: IdempotencyClaim.self) { group in
                for index in 0..<20 { group.addTask { try await store.claim(partner: "acme", key: "same", token: "t\(index)", lease: lease) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(claims.filter { $0 == .claimed }.count == 1)
            #expect(claims.filter { if case .inProgress = $0 { true } else { false } }.count == 19)
        }
    }

    /// A recorded response comes back whole to the next claim, until its retention ends.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func recordIsReplayedUntilRetentionEnds(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let finished = record()
            #expect(try await store.claim(partner: "acme", key: "k1", token: "a", lease: lease) == .claimed)
            #expect(try await store.record(finished, partner: "acme", key: "k1", token: "a", retention: retention))
            clock.advance(3_600_000)
            #expect(try await store.claim(partner: "acme", key: "k1", token: "b", lease: lease) == .completed(finished))
            #expect(try await store.claim(partner: "acme", key: "k1", token: "c", lease: lease) == .completed(finished))
        }
    }

    /// A released claim frees the key for the next request at once; a stale token cannot release or record.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func releaseFreesTheKey(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            #expect(try await store.claim(partner: "acme", key: "k1", token: "a", lease: lease) == .claimed)
            #expect(try await store.releaseClaim(partner: "acme", key: "k1", token: "wrong") == false)
            #expect(try await store.releaseClaim(partner: "acme", key: "k1", token: "a"))
            #expect(try await store.claim(partner: "acme", key: "k1", token: "b", lease: lease) == .claimed)
            #expect(try await store.record(record(), partner: "acme", key: "k1", token: "a", retention: retention) == false)
            #expect(try await store.releaseClaim(partner: "acme", key: "k1", token: "a") == false)
        }
    }

    /// A record with a token that holds nothing changes nothing: not a key that was never claimed,
    /// not another request's record, not another request's claim (which keeps its lease).
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func staleRecordChangesNothing(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            #expect(try await store.record(record(), partner: "acme", key: "never", token: "a", retention: retention) == false)
            #expect(try await store.claim(partner: "acme", key: "never", token: "b", lease: lease) == .claimed)
            let finished = record(status: 200)
            #expect(try await store.claim(partner: "acme", key: "done", token: "a", lease: lease) == .claimed)
            #expect(try await store.record(finished, partner: "acme", key: "done", token: "a", retention: retention))
            #expect(try await store.record(record(status: 201), partner: "acme", key: "done", token: "stale", retention: retention) == false)
            #expect(try await store.claim(partner: "acme", key: "done", token: "c", lease: lease) == .completed(finished))
            #expect(try await store.claim(partner: "acme", key: "held", token: "a", lease: lease) == .claimed)
            clock.advance(20_000)
            #expect(try await store.record(record(), partner: "acme", key: "held", token: "stale", retention: retention) == false)
            #expect(try await store.claim(partner: "acme", key: "held", token: "d", lease: lease) == .inProgress(retryAfterMilliseconds: 40_000))
        }
    }

    /// A claim whose gateway crashed expires by its lease: the key is taken over, and the late
    /// first request can no longer record over the new claim.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func crashedClaimExpiresByItsLease(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            #expect(try await store.claim(partner: "acme", key: "k1", token: "crashed", lease: lease) == .claimed)
            clock.advance(59_999)
            #expect(try await store.claim(partner: "acme", key: "k1", token: "b", lease: lease) == .inProgress(retryAfterMilliseconds: 1))
            clock.advance(1)
            #expect(try await store.claim(partner: "acme", key: "k1", token: "c", lease: lease) == .claimed)
            #expect(try await store.record(record(), partner: "acme", key: "k1", token: "crashed", retention: retention) == false)
            #expect(try await store.record(record(), partner: "acme", key: "k1", token: "c", retention: retention))
        }
    }

    /// Many records written at once (Redis batches those of one loop tick into one call) each
    /// land on their own key; a batch with a stale token records the others.
    @Test(arguments: StoreKind.allCases)
    func recordsWrittenAtOnceEachLand(_ kind: StoreKind) async throws {
        try await withStore(kind, clock: ManualClock(.present)) { (store: any StoreUnderTest) async throws in
            for index in 0..<30 { #expect(try await store.claim(partner: "acme", key: "k\(index)", token: "t\(index)", lease: lease) == .claimed) }
            let recorded = try await withThrowingTaskGroup(of: (Int, Bool).self) { group in
                for index in 0..<30 {
                    let token = index == 7 ? "stale" : "t\(index)"
                    group.addTask { (index, try await store.record(record(status: 200 + index), partner: "acme", key: "k\(index)", token: token, retention: retention)) }
                }
                return try await group.reduce(into: [Int: Bool]()) { $0[$1.0] = $1.1 }
            }
            #expect(recorded.filter { !$0.value }.map(\.key) == [7])
            for index in [0, 13, 29] {
                #expect(try await store.claim(partner: "acme", key: "k\(index)", token: "again", lease: lease) == .completed(record(status: 200 + index)))
            }
            #expect(try await store.claim(partner: "acme", key: "k7", token: "again", lease: lease) == .inProgress(retryAfterMilliseconds: 60_000))
        }
    }

    /// A record and a claim of the same key made in one event-loop tick (one Redis call): the
    /// claim sees the record.
    @Test(arguments: StoreKind.allCases)
    func claimAfterRecordInOneTickSeesTheRecord(_ kind: StoreKind) async throws {
        try await withStore(kind, clock: ManualClock(.present)) { (store: any StoreUnderTest) async throws in
            let finished = record()
            #expect(try await store.claim(partner: "acme", key: "k1", token: "a", lease: lease) == .claimed)
            let eventLoop = store.defaultEventLoop
            let (recorded, claimed) = try await eventLoop.flatSubmit {
                let recordPromise = eventLoop.makePromise(of: Bool.self)
                let claimPromise = eventLoop.makePromise(of: IdempotencyClaim.self)
                store.record(finished, partner: "acme", key: "k1", token: "a", retention: retention, on: eventLoop) { recordPromise.completeWith($0) }
                store.claim(partner: "acme", key: "k1", token: "b", lease: lease, on: eventLoop) { claimPromise.completeWith($0) }
                return recordPromise.futureResult.and(claimPromise.futureResult)
            }.get()
            #expect(recorded)
            #expect(claimed == .completed(finished))
        }
    }

    /// Admission that claims in the same step: an admitted request claims its key, a duplicate
    /// finds it in progress (still paying its tokens), a retry after the record gets the record.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func admissionClaimsTheKeyOfAnAdmittedRequest(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let l = limits(rate: 0.001, burst: 10)
            func admit(_ token: String) async throws -> AdmissionWithClaim {
                try await store.admit(
                    partner: "acme", limits: l, lease: nil, leaseDuration: lease, claiming: .init(key: "k1", token: token, lease: lease)
                )
            }
            let first = try await admit("a")
            #expect(first.decision.verdict == .admitted && first.claim == .claimed)
            clock.advance(15_000)
            let duplicate = try await admit("b")
            #expect(duplicate.decision.verdict == .admitted && duplicate.decision.tokensRemaining == 8)
            #expect(duplicate.claim == .inProgress(retryAfterMilliseconds: 45_000))
            let finished = record()
            #expect(try await store.record(finished, partner: "acme", key: "k1", token: "a", retention: retention))
            #expect(try await admit("c").claim == .completed(finished))
        }
    }

    /// A request that admission refuses (rate, quota or concurrency) claims nothing: its key stays free.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func refusedRequestClaimsNothing(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        try await withStore(kind, clock: ManualClock(epoch)) { (store: any StoreUnderTest) async throws in
            for (partner, l, lease) in [("rate", limits(rate: 0.001, burst: 1), nil), ("quota", limits(quota: 1), nil), ("slots", limits(concurrency: 1), "l2")] {
                let first = try await store.admit(
                    partner: partner, limits: l, lease: lease == nil ? nil : "l1", leaseDuration: self.lease, claiming: .init(key: "k1", token: "a", lease: self.lease)
                )
                #expect(first.decision.verdict == .admitted && first.claim == .claimed)
                let refused = try await store.admit(
                    partner: partner, limits: l, lease: lease, leaseDuration: self.lease, claiming: .init(key: "k2", token: "b", lease: self.lease)
                )
                #expect(refused.decision.verdict != .admitted, "\(partner)")
                #expect(refused.claim == nil, "\(partner)")
                #expect(try await store.claim(partner: partner, key: "k2", token: "c", lease: self.lease) == .claimed, "\(partner)")
            }
        }
    }

    /// Keyed and unkeyed requests of one partner at once (Redis decides them in shared calls):
    /// one claim per key wins, unkeyed and refused requests get no claim, and the concurrency
    /// limit counts every request once.
    @Test(arguments: StoreKind.allCases)
    func concurrentKeyedAndUnkeyedAdmissions(_ kind: StoreKind) async throws {
        try await withStore(kind, clock: ManualClock(.present)) { (store: any StoreUnderTest) async throws in
            let l = limits(concurrency: 24)
            let eventLoop = store.defaultEventLoop
            let answers = try await eventLoop.flatSubmit {
                let futures = (0..<30).map { index in
                    let promise = eventLoop.makePromise(of: AdmissionWithClaim.self)
                    if index % 3 == 0 {
                        store.admit(partner: "acme", limits: l, lease: "l\(index)", leaseDuration: lease, on: eventLoop) {
                            promise.completeWith($0.map { AdmissionWithClaim(decision: $0, claim: nil) })
                        }
                    } else {
                        let claim = IdempotencyClaimRequest(key: index % 3 == 1 ? "same" : "own-\(index)", token: "t\(index)", lease: lease)
                        store.admit(partner: "acme", limits: l, lease: "l\(index)", leaseDuration: lease, claiming: claim, on: eventLoop) { promise.completeWith($0) }
                    }
                    return promise.futureResult
                }
                return EventLoopFuture.whenAllSucceed(futures, on: eventLoop)
            }.get()
            // Which ones get in can vary (a script reloaded by Redis reorders calls); how many cannot.
            let admitted = answers.indices.filter { answers[$0].decision.verdict == .admitted }
            let refused = answers.indices.filter { answers[$0].decision.verdict == .concurrencyLimited }
            #expect(admitted.count == 24 && refused.count == 6)
            #expect(refused.allSatisfy { answers[$0].claim == nil })
            #expect(admitted.filter { $0 % 3 == 0 }.allSatisfy { answers[$0].claim == nil })
            #expect(admitted.filter { $0 % 3 == 2 }.allSatisfy { answers[$0].claim == .claimed })
            let same = admitted.filter { $0 % 3 == 1 }.map { answers[$0].claim }
            #expect(same.filter { $0 == .claimed }.count == 1)
            #expect(same.filter { if case .inProgress = $0 { true } else { false } }.count == same.count - 1)
            for index in refused where index % 3 == 2 {
                #expect(try await store.claim(partner: "acme", key: "own-\(index)", token: "x", lease: lease) == .claimed)
            }
        }
    }

    /// Keys are scoped by partner: two partners may use the same key.
    @Test(arguments: StoreKind.allCases)
    func keysAreScopedByPartner(_ kind: StoreKind) async throws {
        try await withStore(kind, clock: ManualClock(.present)) { (store: any StoreUnderTest) async throws in
            #expect(try await store.claim(partner: "acme", key: "order-1", token: "a", lease: lease) == .claimed)
            #expect(try await store.claim(partner: "globex", key: "order-1", token: "b", lease: lease) == .claimed)
        }
    }

    /// A record whose body was too large to keep, with hostile bytes in its key and headers, survives the round trip.
    @Test(arguments: StoreKind.allCases)
    func unusualRecordsRoundTrip(_ kind: StoreKind) async throws {
        try await withStore(kind, clock: ManualClock(.present)) { (store: any StoreUnderTest) async throws in
            let key = "{p:other}:idem:\" \\ ~" + String(repeating: "x", count: 230)
            var large = record(status: 200, body: "", kept: false)
            large.headers.append(.init("X-Odd", "ünïcode & \"quotes\""))
            #expect(try await store.claim(partner: "acme", key: key, token: "a", lease: lease) == .claimed)
            #expect(try await store.record(large, partner: "acme", key: key, token: "a", retention: retention))
            #expect(try await store.claim(partner: "acme", key: key, token: "b", lease: lease) == .completed(large))
        }
    }
}

/// The Redis layout: one key per partner and idempotency key, in the partner's hash slot, always with a TTL.
struct IdempotencyRedisLayoutTests {
    /// Claims and records carry a TTL (lease, then retention) and share the partner's hash tag.
    @Test func everyKeyHasATTLInThePartnersSlot() async throws {
        let client = try await makeRedisClient()
        let store = RedisStore(client: client, keyPrefix: "layout-\(UInt32.random(in: 0...UInt32.max))")
        let key = store.idempotencyKey("acme", "k1")
        #expect(key.hasPrefix("\(store.keyPrefix):{p:acme}:"))
        let claimed = ContinuousClock.now
        #expect(try await store.claim(partner: "acme", key: "k1", token: "a", lease: .seconds(60)) == .claimed)
        try await expectTTL(key, on: client, set: .seconds(60), since: claimed)
        let finished = IdempotencyRecord(
            fingerprint: .init(target: BodyHasher().finalize(), body: BodyHasher().finalize()), status: 200, headers: [], body: [], bodyKept: true
        )
        let recorded = ContinuousClock.now
        #expect(try await store.record(finished, partner: "acme", key: "k1", token: "a", retention: .seconds(86_400)))
        try await expectTTL(key, on: client, set: .seconds(86_400), since: recorded)
        await client.shutdown()
    }

    /// The stored value is the encoded record itself; one written as `R<record>` (gateways
    /// before that change) is still replayed, and a claim (`C…`) is never taken for a record.
    @Test func recordsAreStoredEncodedAndOldOnesStillReplay() async throws {
        let client = try await makeRedisClient()
        let store = RedisStore(client: client, keyPrefix: "values-\(UInt32.random(in: 0...UInt32.max))")
        let finished = IdempotencyRecord(
            fingerprint: .init(target: BodyHasher().finalize(), body: BodyHasher().finalize()), status: 201, headers: [], body: [1, 2], bodyKept: true
        )
        #expect(try await store.claim(partner: "acme", key: "new", token: "a", lease: .seconds(60)) == .claimed)
        #expect(try await store.record(finished, partner: "acme", key: "new", token: "a", retention: .seconds(60)))
        #expect(try await client.send(["GET", store.idempotencyKey("acme", "new")]) == .string(Array(finished.encoded().utf8)))
        _ = try await client.send(["SET", store.idempotencyKey("acme", "old"), "R" + finished.encoded(), "PX", "60000"])
        #expect(try await store.claim(partner: "acme", key: "old", token: "b", lease: .seconds(60)) == .completed(finished))
        await client.shutdown()
    }
}
