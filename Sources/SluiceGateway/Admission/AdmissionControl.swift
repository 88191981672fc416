import Logging
import NIOCore
import SluiceCore
import SluiceStore

/// Admission for one policy snapshot (SPEC §3 rate limits, §4.3 Redis trouble): asks the store,
/// and while it is unreachable applies `on_redis_failure` — `local` enforces each instance's
/// share (limits divided by `expected_instances`), `allow` admits, `deny` refuses with 503.
/// Switching to the fallback and back is logged once per transition and counted.
struct AdmissionControl: Sendable {
    let backend: StoreBackend
    let mode: GatewayPolicy.RedisFailureMode
    let instances: Int
    let leaseDuration: Duration
    /// Makes concurrency lease tokens: the gateway's own, never an id the partner chose (a
    /// partner repeating one `X-Request-Id` must not hold one slot for many requests).
    let identifiers: IdentifierGenerator
    let metrics: GatewayMetrics
    let logger: Logger

    /// What `admit` answers: a decision at once (embedded store, no limits, a fallback), or one
    /// that comes when the shared store replies.
    enum Answer {
        case decided(Admission)
        case pending(Pending)
    }

    /// An admission the shared store decides.
    struct Pending {
        fileprivate let control: AdmissionControl
        fileprivate let partner: Partner
        fileprivate let cost: Int
        fileprivate let limits: AdmissionLimits
        fileprivate let lease: String?
        fileprivate let claiming: IdempotencyClaimRequest?
        fileprivate let eventLoop: any EventLoop

        /// Asks the store; `completion` runs on the event loop with the admission (a fallback's
        /// when the store fails).
        func whenDecided(_ completion: @escaping (Admission) -> Void) {
            control.ask(self, completion)
        }
    }

    /// Decides on `eventLoop` (call there) for a request that takes `cost` tokens (and one unit
    /// of quota unless `quota` is false): the embedded store and the fallbacks answer at once,
    /// Redis when its reply arrives on this loop's connection — and then claims `claiming` in the
    /// same call when the request is admitted (`Admission.claim`).
    func admit(partner: Partner, cost: Int, quota: Bool = true, claiming: IdempotencyClaimRequest?, on eventLoop: any EventLoop) -> Answer {
        var limits = AdmissionLimits(partner.limits, cost: cost)
        if !quota { limits.quota = nil }
        guard !limits.isUnlimited else { return .decided(.admittedWithoutLimits) }
        let lease = limits.concurrency == nil ? nil : identifiers.token()
        if let embedded = backend.embedded {
            let decision = embedded.decide(partner: partner.id, limits: limits, lease: lease, leaseDuration: leaseDuration)
            return .decided(record(decision, limits: limits, partner: partner.id, lease: lease, local: false, on: eventLoop))
        }
        guard case .call = backend.breaker.permission() else {
            return .decided(fallback(partner: partner, cost: cost, lease: lease, on: eventLoop))
        }
        return .pending(Pending(control: self, partner: partner, cost: cost, limits: limits, lease: lease, claiming: claiming, eventLoop: eventLoop))
    }

    private func ask(_ pending: Pending, _ completion: @escaping (Admission) -> Void) {
        let (partner, limits, lease, eventLoop) = (pending.partner, pending.limits, pending.lease, pending.eventLoop)
        guard let claiming = pending.claiming else {
            backend.store.admit(partner: partner.id, limits: limits, lease: lease, leaseDuration: leaseDuration, on: eventLoop) { result in
                completion(answered(pending, result))
            }
            return
        }
        backend.store.admit(partner: partner.id, limits: limits, lease: lease, leaseDuration: leaseDuration, claiming: claiming, on: eventLoop) {
            result in
            var admission = answered(pending, result.map(\.decision))
            switch result {
            case .success(let answer): admission.claim = answer.claim.map { .success($0) }
            case .failure(let error): admission.claim = .failure(error)
            }
            completion(admission)
        }
    }

    /// The admission the store's answer gives, or the fallback's when the store failed.
    private func answered(_ pending: Pending, _ result: Result<AdmissionDecision, any Error>) -> Admission {
        let (partner, limits, lease, eventLoop) = (pending.partner, pending.limits, pending.lease, pending.eventLoop)
        switch result {
        case .success(let decision):
            if backend.breaker.succeeded() {
                metrics.storeFallback(active: false)
                logger.notice("rate-limit store is reachable again; shared limits apply")
            }
            return record(decision, limits: limits, partner: partner.id, lease: lease, local: false, on: eventLoop)
        case .failure(let error):
            metrics.storeFailed()
            if backend.breaker.failed() {
                metrics.storeFallback(active: true)
                logger.warning(
                    "rate-limit store is unreachable; on_redis_failure applies",
                    metadata: ["mode": .string(mode.rawValue), "error": .string("\(error)")]
                )
            }
            return fallback(partner: partner, cost: pending.cost, lease: lease, on: eventLoop)
        }
    }

    /// Hands the request's concurrency slot back (without waiting for the store).
    func finish(_ admission: Admission) {
        guard let lease = admission.lease else { return }
        guard lease.eventLoop.inEventLoop else {
            lease.eventLoop.execute { finish(admission) }
            return
        }
        if lease.local {
            backend.localLeases.remove(lease.id, on: lease.eventLoop)
            backend.local.release(partner: lease.partner, lease: lease.id, on: lease.eventLoop)
        } else {
            backend.leases.remove(lease.id, on: lease.eventLoop)
            backend.store.release(partner: lease.partner, lease: lease.id, on: lease.eventLoop)
        }
    }

    private func fallback(partner: Partner, cost: Int, lease: String?, on eventLoop: any EventLoop) -> Admission {
        switch mode {
        case .allow:
            return .admittedWithoutLimits
        case .deny:
            return Admission(verdict: .storeUnavailable)
        case .local:
            let limits = AdmissionLimits(partner.limits, cost: cost, localShareOf: instances)
            let decision = backend.local.decide(partner: partner.id, limits: limits, lease: lease, leaseDuration: leaseDuration)
            return record(decision, limits: limits, partner: partner.id, lease: lease, local: true, on: eventLoop)
        }
    }

    private func record(
        _ decision: AdmissionDecision, limits: AdmissionLimits, partner: String, lease: String?, local: Bool, on eventLoop: any EventLoop
    ) -> Admission {
        if let quota = limits.quota, quota > 0, let remaining = decision.quotaRemaining {
            metrics.quotaUsed(partner: partner, ratio: Double(quota - min(quota, remaining)) / Double(quota), on: eventLoop)
        }
        guard decision.verdict == .admitted else {
            metrics.rateLimitRejected(partner: partner, reason: decision.verdict.rawValue)
            return Admission(verdict: .refused(decision.verdict), limits: limits, decision: decision)
        }
        var held: HeldLease?
        if let lease, limits.concurrency != nil {
            held = HeldLease(partner: partner, id: lease, local: local, eventLoop: eventLoop)
            (local ? backend.localLeases : backend.leases).add(lease, partner, on: eventLoop)
        }
        return Admission(verdict: .admitted, limits: limits, decision: decision, lease: held)
    }
}
