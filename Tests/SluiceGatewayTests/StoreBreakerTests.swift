import Testing

@testable import SluiceGateway

/// The circuit breaker around the shared store: opened by failures, one probe after `openFor`,
/// and a probe at once when the store moved (a failover).
struct StoreBreakerTests {
    private let start = ContinuousClock.now

    @Test func opensAfterTheThresholdAndProbesOnceAfterItsTime() {
        let breaker = StoreBreaker(threshold: 2, openFor: .seconds(1))
        #expect(!breaker.failed(now: start))
        #expect(breaker.failed(now: start), "the second failure opens it")
        #expect(breaker.permission(now: start + .milliseconds(500)) == .skip)
        #expect(breaker.permission(now: start + .seconds(1)) == .call, "one probe after openFor")
        #expect(breaker.permission(now: start + .seconds(1)) == .skip, "only one")
        #expect(breaker.succeeded(), "the probe's success closes it")
        #expect(breaker.permission(now: start + .seconds(1)) == .call)
    }

    @Test func aMovedStoreIsProbedAtOnce() {
        let breaker = StoreBreaker(threshold: 1, openFor: .seconds(60))
        breaker.storeMoved()
        #expect(breaker.permission(now: start) == .call, "a closed breaker stays closed")
        #expect(breaker.failed(now: start))
        #expect(breaker.permission(now: start + .seconds(1)) == .skip)
        breaker.storeMoved()
        #expect(breaker.permission(now: start + .seconds(1)) == .call, "probed now, not after 60 s")
        #expect(breaker.permission(now: start + .seconds(1)) == .skip, "one probe")
        #expect(!breaker.failed(now: start + .seconds(1)), "a failed probe opens it again")
        #expect(breaker.permission(now: start + .seconds(2)) == .skip)
    }
}
