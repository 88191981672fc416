import SluiceCore
import Testing

struct CircuitBreakerTests {
    private typealias Breaker = CircuitBreaker<TestInstant>

    private func breaker(window: Int = 10, minCalls: Int = 4, rate: Double = 0.5, slow: Duration? = nil, probes: Int = 2) -> Breaker {
        Breaker(.init(window: window, minCalls: minCalls, failureRate: rate, slowCall: slow, openFor: .seconds(10), halfOpenProbes: probes))
    }

    /// Lets a call through and reports its outcome; returns the transition.
    @discardableResult
    private func call(_ breaker: inout Breaker, _ outcome: Breaker.Outcome, at now: Double, took: Duration = .milliseconds(10)) -> Breaker.State? {
        guard case .allowed(let ticket) = breaker.acquire(now: .seconds(now)).0 else {
            Issue.record("call refused at \(now)")
            return nil
        }
        return breaker.record(ticket, outcome, duration: took, now: .seconds(now))
    }

    /// It opens when the failure share reaches the rate, and only once min_calls were seen.
    @Test func opensOnFailureRateAfterMinCalls() {
        var b = breaker()
        #expect(call(&b, .failure, at: 0) == nil)
        #expect(call(&b, .failure, at: 0) == nil)
        #expect(call(&b, .failure, at: 0) == nil)  // 3 failures, but min_calls is 4
        #expect(call(&b, .success, at: 0) == .open(until: .seconds(10)))  // 3 of 4 >= 50%
        guard case .refused(let wait) = b.acquire(now: .seconds(4)).0 else { Issue.record("should refuse"); return }
        #expect(wait == .seconds(6))
    }

    /// Below the rate it stays closed; old outcomes leave the window.
    @Test func staysClosedBelowTheRate() {
        var b = breaker(window: 4, minCalls: 4)
        for outcome in [Breaker.Outcome.failure, .success, .success, .success, .failure, .success] {
            #expect(call(&b, outcome, at: 0) == nil)  // never 2 failures among the last 4
        }
        #expect(b.state == .closed)
    }

    /// After open_for it is half-open: exactly half_open_probes calls go through, and all succeeding closes it.
    @Test func halfOpenProbesCloseIt() {
        var b = breaker(minCalls: 1, rate: 1, probes: 2)
        call(&b, .failure, at: 0)
        let (first, transition) = b.acquire(now: .seconds(10))
        #expect(transition == .halfOpen)
        let (second, _) = b.acquire(now: .seconds(10))
        guard case .refused = b.acquire(now: .seconds(10)).0 else { Issue.record("a third probe must wait"); return }
        guard case .allowed(let one) = first, case .allowed(let two) = second else { Issue.record("probes refused"); return }
        #expect(b.record(one, .success, duration: .zero, now: .seconds(11)) == nil)
        #expect(b.record(two, .success, duration: .zero, now: .seconds(11)) == .closed)
        #expect(call(&b, .success, at: 12) == nil)
    }

    /// A failing probe opens it again for open_for.
    @Test func failingProbeReopens() {
        var b = breaker(minCalls: 1, rate: 1)
        call(&b, .failure, at: 0)
        #expect(call(&b, .failure, at: 10) == .open(until: .seconds(20)))
    }

    /// A cancelled probe gives its slot back and decides nothing.
    @Test func cancelledProbeGivesItsSlotBack() {
        var b = breaker(minCalls: 1, rate: 1, probes: 1)
        call(&b, .failure, at: 0)
        guard case .allowed(let probe) = b.acquire(now: .seconds(10)).0 else { Issue.record("probe refused"); return }
        #expect(b.record(probe, .cancelled, duration: .zero, now: .seconds(10)) == nil)
        #expect(b.state == .halfOpen)
        #expect(call(&b, .success, at: 10) == .closed)
    }

    /// Cancellations in the closed state are not failures.
    @Test func cancellationsAreNotFailures() {
        var b = breaker(minCalls: 2, rate: 0.5)
        for _ in 0..<10 { call(&b, .cancelled, at: 0) }
        call(&b, .success, at: 0)
        #expect(call(&b, .success, at: 0) == nil)
        #expect(b.state == .closed)
    }

    /// A result of a call let through before the last state change is ignored.
    @Test func lateResultsAreIgnored() {
        var b = breaker(minCalls: 1, rate: 1)
        guard case .allowed(let slow) = b.acquire(now: .seconds(0)).0 else { Issue.record("refused"); return }
        call(&b, .failure, at: 0)  // opens
        #expect(b.record(slow, .failure, duration: .zero, now: .seconds(1)) == nil)
        guard case .refused(let wait) = b.acquire(now: .seconds(1)).0 else { Issue.record("should still be open"); return }
        #expect(wait == .seconds(9))  // not pushed back by the late failure
        _ = b.acquire(now: .seconds(10))  // half-open now
        #expect(b.record(slow, .success, duration: .zero, now: .seconds(10)) == nil)
        #expect(b.state == .halfOpen)
    }

    /// Calls slower than slow_call count as failures even when they succeed.
    @Test func slowCallsAreFailures() {
        var b = breaker(minCalls: 2, rate: 1, slow: .seconds(5))
        #expect(call(&b, .success, at: 0, took: .seconds(6)) == nil)
        #expect(call(&b, .success, at: 0, took: .seconds(7)) == .open(until: .seconds(10)))
    }
}

struct RetryTests {
    /// Only idempotent methods, or requests with an Idempotency-Key, may be retried.
    @Test func retryableRequests() {
        for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] { #expect(RetryRules.mayRetry(method: method, hasIdempotencyKey: false)) }
        for method in ["POST", "PATCH"] {
            #expect(!RetryRules.mayRetry(method: method, hasIdempotencyKey: false))
            #expect(RetryRules.mayRetry(method: method, hasIdempotencyKey: true))
        }
    }

    /// Backoff is full jitter under an exponentially growing cap, never above the maximum.
    @Test func backoffStaysInsideTheRange() {
        var random = SystemRandomNumberGenerator()
        for number in 1...8 {
            let cap = min(Duration.seconds(1), .milliseconds(50) * (1 << (number - 1)))
            for _ in 0..<200 {
                let wait = RetryRules.backoff(retry: number, min: .milliseconds(50), max: .seconds(1), using: &random)
                #expect(wait >= .zero && wait <= cap)
            }
        }
    }

    /// The budget allows retries up to its share of the last ten seconds' requests (with a small floor).
    @Test func budgetLimitsRetries() {
        var budget = RetryBudget<TestInstant>(share: 0.2, minimum: 3)
        for _ in 0..<50 { budget.recordRequest(now: .seconds(0)) }
        var granted = 0
        for _ in 0..<50 where budget.takeRetry(now: .seconds(1)) { granted += 1 }
        #expect(granted == 10)
        let spent = budget.takeRetry(now: .seconds(9.5))
        #expect(!spent)
        let afterAgeing = budget.takeRetry(now: .seconds(11))  // the old requests and retries aged out: the floor applies
        #expect(afterAgeing)
        var quiet = RetryBudget<TestInstant>(share: 0.2, minimum: 3)
        quiet.recordRequest(now: .seconds(0))
        let floor = (0..<4).map { _ in quiet.takeRetry(now: .seconds(0)) }
        #expect(floor == [true, true, true, false])
    }
}
