import Logging
import NIOCore
import SluiceCore
import Prometheus
import Synchronization

/// Everything the gateway keeps per upstream: its client, circuit breaker, bulkhead and retry
/// budget. Kept across reloads while the upstream's settings do not change.
final class UpstreamRuntime: RetryAllowance, Sendable {
    let policy: UpstreamPolicy
    let client: UpstreamClient
    let bulkhead: Bulkhead
    private let breaker: Mutex<CircuitBreaker<ContinuousClock.Instant>>
    private let budget: Mutex<RetryBudget<ContinuousClock.Instant>>
    private let metrics: GatewayMetrics
    private let upstreamDuration: DurationHistogram
    private let logger: Logger
    private let clock: UptimeClock

    var name: String { policy.name }

    init(policy: UpstreamPolicy, client: UpstreamClient, metrics: GatewayMetrics, logger: Logger, clock: @escaping UptimeClock) {
        self.policy = policy
        self.clock = clock
        self.client = client
        self.bulkhead = Bulkhead(limit: policy.maxInFlight, queueTimeout: policy.queueTimeout)
        self.breaker = Mutex(CircuitBreaker(policy.circuitBreaker))
        self.budget = Mutex(RetryBudget(share: policy.retries.budget))
        self.metrics = metrics
        self.upstreamDuration = metrics.upstreamDuration(upstream: policy.name)
        self.logger = logger
        metrics.breakerChanged(upstream: policy.name, to: .closed, isTransition: false)
    }

    /// Asks the breaker whether a call may go out.
    func permission() -> CircuitBreaker<ContinuousClock.Instant>.Permission {
        let (permission, transition) = breaker.withLock { $0.acquire(now: clock()) }
        if let transition { announce(transition) }
        return permission
    }

    /// Reports how a call ended to the breaker and, unless the partner cut it short, to the
    /// upstream duration histogram.
    func record(_ ticket: CircuitBreaker<ContinuousClock.Instant>.Ticket, _ outcome: CircuitBreaker<ContinuousClock.Instant>.Outcome, duration: Duration) {
        if outcome != .cancelled { upstreamDuration.record(duration) }
        let transition = breaker.withLock { $0.record(ticket, outcome, duration: duration, now: clock()) }
        if let transition { announce(transition) }
    }

    /// Counts a partner request towards the retry budget.
    func recordRequest() {
        budget.withLock { $0.recordRequest(now: clock()) }
    }

    /// Takes a retry from the budget.
    func takeRetry() -> Bool {
        let granted = budget.withLock { $0.takeRetry(now: clock()) }
        if granted { metrics.upstreamRetried(upstream: policy.name) }
        return granted
    }

    /// The full-jitter backoff before retry `number` (1, 2, …), within the policy's range.
    func backoff(before number: Int) -> Duration {
        var random = SystemRandomNumberGenerator()
        return RetryRules.backoff(retry: number, min: policy.retries.backoffMin, max: policy.retries.backoffMax, using: &random)
    }

    private func announce(_ state: CircuitBreaker<ContinuousClock.Instant>.State) {
        metrics.breakerChanged(upstream: policy.name, to: state, isTransition: true)
        let name: String = switch state {
        case .closed: "closed"
        case .open: "open"
        case .halfOpen: "half-open"
        }
        let level: Logger.Level = if case .open = state { .warning } else { .notice }
        logger.log(level: level, "circuit breaker \(name)", metadata: ["upstream": .string(policy.name), "breaker": .string(name)])
    }
}
