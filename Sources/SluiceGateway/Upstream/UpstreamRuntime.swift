import Logging
import NIOCore
import SluiceCore
import SluiceStore
import Prometheus
import Synchronization

/// Everything the gateway keeps per upstream: its targets, their health and balancer, its
/// circuit breaker and retry budget. Kept across reloads while the upstream's settings do not
/// change; a new runtime for changed settings keeps the health of every unchanged target.
final class UpstreamRuntime: RetryAllowance, Sendable {
    let policy: UpstreamPolicy
    let targets: [UpstreamTarget]
    let weights: [Int]
    private let targetHashes: [UInt64]
    let health: Mutex<PoolHealth<ContinuousClock.Instant>>
    /// The targets calls may use now (`PoolHealth.eligible`), published for lock-free picks.
    private let eligibleBits: Atomic<UInt64>
    /// Nanoseconds after `origin` when an ejection ends (`Int64.max`: none under way).
    private let nextReturn = Atomic<Int64>(.max)
    /// What `nextReturn` and the targets' latency samples count from (one for every runtime,
    /// as targets outlive runtimes).
    private static let origin = ContinuousClock.now
    private let draws = Atomic<UInt64>(0)
    private let roundRobin: LoopLocal<SmoothRoundRobin>?
    let breaker: Mutex<CircuitBreaker<ContinuousClock.Instant>>
    private let budget: Mutex<RetryBudget<ContinuousClock.Instant>>
    private let metrics: GatewayMetrics
    private let upstreamDuration: DurationHistogram
    private let logger: Logger
    let clock: UptimeClock

    var name: String { policy.name }

    /// - Parameters:
    ///   - targets: The pool's targets (a target given by name: one per address it resolved to).
    ///   - weights: Each target's weight.
    ///   - previous: The runtime this one replaces; its targets' health carries over.
    init(
        policy: UpstreamPolicy, targets: [UpstreamTarget], weights: [Int], previous: UpstreamRuntime?, eventLoopGroup: any EventLoopGroup,
        metrics: GatewayMetrics, logger: Logger, clock: @escaping UptimeClock
    ) {
        self.policy = policy
        self.targets = targets
        self.clock = clock
        self.weights = weights
        targetHashes = targets.map { StableHash.of($0.label) }
        var health = PoolHealth<ContinuousClock.Instant>(count: targets.count, health: policy.health, panicThreshold: policy.panicThreshold)
        if let previous {
            let carried = previous.health.withLock { $0 }
            health = PoolHealth(
                keys: targets.map(\.label), carrying: carried, previousKeys: previous.targets.map(\.label), health: policy.health,
                panicThreshold: policy.panicThreshold
            )
        }
        eligibleBits = Atomic(health.eligible.bits)
        self.health = Mutex(health)
        roundRobin = policy.balancer == .roundRobin ? LoopLocal(group: eventLoopGroup) { _ in SmoothRoundRobin(count: targets.count) } : nil
        self.breaker = Mutex(CircuitBreaker(policy.circuitBreaker))
        self.budget = Mutex(RetryBudget(share: policy.retries.budget))
        self.metrics = metrics
        self.upstreamDuration = metrics.upstreamDuration(upstream: policy.name)
        self.logger = logger
        metrics.breakerChanged(upstream: policy.name, to: .closed, isTransition: false)
        for (index, target) in targets.enumerated() {
            metrics.targetHealth(upstream: policy.name, target: target.label, healthy: health.targets[index].isIn)
        }
        publish(health)
    }

    // MARK: - Picking a target

    /// The target for a try: among the eligible ones (healthy, or all in panic), one not in
    /// `tried` when there is one, by the upstream's balancer. Nil: no target can take the call.
    func pick(partner: UInt64, excluding tried: TargetSet, on eventLoop: any EventLoop) -> Int? {
        var eligible = currentEligible()
        let untried = eligible.subtracting(tried)
        if !untried.isEmpty { eligible = untried }
        if targets.count == 1 { return eligible.isEmpty ? nil : 0 }
        switch policy.balancer {
        case .leastRequest:
            var random = SplitMix64(seed: draws.wrappingAdd(1, ordering: .relaxed).newValue)
            return BalancerRules.leastRequest(
                eligible, weights: weights, inFlight: { self.targets[$0].inFlight.load(ordering: .relaxed) }, latency: { self.targets[$0].latency },
                now: { self.nanoseconds(self.clock()) }, using: &random
            )
        case .roundRobin:
            let weights = weights
            if let pick = roundRobin?.update(on: eventLoop, { $0.pick(eligible, weights: weights) }) { return pick }
            return eligible.first(where: { _ in true })
        case .partnerHash:
            return BalancerRules.partnerHash(eligible, weights: weights, targetHashes: targetHashes, partner: partner)
        }
    }

    /// A try on `target` that started at `started` got its answer (or timed out): a latency
    /// sample when least_request picks among several targets.
    func tryAnswered(on target: Int, started: ContinuousClock.Instant) {
        guard policy.balancer == .leastRequest, targets.count > 1 else { return }
        let now = ContinuousClock.now
        targets[target].answered(after: now - started, at: nanoseconds(clock()))
    }

    /// No target could take a call: counted.
    func noTarget() {
        metrics.noTarget(upstream: name)
    }

    /// Whether a target other than those in `tried` could take a call.
    func hasAnotherTarget(than tried: TargetSet) -> Bool {
        !currentEligible().subtracting(tried).isEmpty
    }

    private func currentEligible() -> TargetSet {
        let returnAt = nextReturn.load(ordering: .relaxed)
        if returnAt != .max, nanoseconds(clock()) >= returnAt {
            let now = clock()
            let (events, snapshot) = health.withLock { health in (health.refresh(now: now), health) }
            publish(snapshot)
            announce(events)
        }
        return TargetSet(bits: eligibleBits.load(ordering: .relaxed))
    }

    // MARK: - Health

    /// A try on `target` ended: `failed` when the gateway saw it fail (connect error, timeout,
    /// reset, 502/503/504), nil when there is no verdict (the partner went away).
    func tryEnded(on index: Int, failed: Bool?) {
        let target = targets[index]
        guard let failed else { return }
        if !failed {
            target.okTries.increment()
            if target.failureStreak.load(ordering: .relaxed) != 0 { target.failureStreak.store(0, ordering: .relaxed) }
            return
        }
        target.failedTries.increment()
        let streak = target.failureStreak.wrappingAdd(1, ordering: .relaxed).newValue
        guard streak >= policy.health.passive.consecutiveFailures, targets.count > 1 else { return }
        target.failureStreak.store(0, ordering: .relaxed)
        let now = clock()
        let (events, snapshot) = health.withLock { health in (health.failuresReached(index, now: now), health) }
        publish(snapshot)
        announce(events)
    }

    /// An active probe of `target` answered.
    func probed(_ index: Int, good: Bool) {
        let now = clock()
        let (events, snapshot) = health.withLock { health in (health.probed(index, good: good, now: now), health) }
        publish(snapshot)
        announce(events)
    }

    private func publish(_ health: PoolHealth<ContinuousClock.Instant>) {
        eligibleBits.store(health.eligible.bits, ordering: .relaxed)
        nextReturn.store(health.nextReturn.map(nanoseconds) ?? .max, ordering: .relaxed)
    }

    private func nanoseconds(_ instant: ContinuousClock.Instant) -> Int64 {
        let elapsed = Self.origin.duration(to: instant).components
        return elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000
    }

    private func announce(_ events: [PoolHealth<ContinuousClock.Instant>.Event]) {
        for event in events {
            switch event {
            case .ejected(let index, let reason, let length):
                let target = targets[index].label
                metrics.targetEjected(upstream: name, target: target, reason: reason.rawValue)
                metrics.targetHealth(upstream: name, target: target, healthy: false)
                var metadata: Logger.Metadata = ["upstream": .string(name), "target": .string(target), "reason": .string(reason.rawValue)]
                if let length { metadata["ejection_seconds"] = .stringConvertible(length.components.seconds) }
                logger.warning("upstream target ejected", metadata: metadata)
            case .returned(let index):
                let target = targets[index].label
                metrics.targetHealth(upstream: name, target: target, healthy: true)
                logger.notice("upstream target back", metadata: ["upstream": .string(name), "target": .string(target)])
            }
        }
    }

    // MARK: - Breaker and retries

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

    /// The breaker state as logs and the admin API name it.
    static func name(of state: CircuitBreaker<ContinuousClock.Instant>.State) -> String {
        switch state {
        case .closed: "closed"
        case .open: "open"
        case .halfOpen: "half-open"
        }
    }

    private func announce(_ state: CircuitBreaker<ContinuousClock.Instant>.State) {
        metrics.breakerChanged(upstream: policy.name, to: state, isTransition: true)
        let name = Self.name(of: state)
        let level: Logger.Level = if case .open = state { .warning } else { .notice }
        logger.log(level: level, "circuit breaker \(name)", metadata: ["upstream": .string(policy.name), "breaker": .string(name)])
    }
}
