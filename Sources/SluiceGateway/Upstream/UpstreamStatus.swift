import Foundation
import SluiceCore

extension UpstreamRuntime {
    /// The upstream as `GET /admin/upstreams` shows it: balancer, breaker, whether the pool is
    /// in panic, and per target its health state, ejections, calls in flight and last probe.
    /// Times are wall-clock (ISO 8601), converted from the runtime's monotonic clock.
    func status(wallNow: Date = Date()) -> JSONValue {
        let health = health.withLock { $0 }
        let breakerState = breaker.withLock { $0.state }
        let now = clock()
        func wall(_ instant: ContinuousClock.Instant) -> JSONValue {
            let age = instant.duration(to: now).components
            let seconds = Double(age.seconds) + Double(age.attoseconds) / 1e18
            return .string(wallNow.addingTimeInterval(-seconds).formatted(.iso8601))
        }
        let eligible = health.eligible
        let targetDocuments: [JSONValue] = targets.enumerated().map { index, target in
            let state = health.targets[index]
            let name = state.probedDown ? "down" : state.ejectedUntil != nil ? "ejected" : "healthy"
            return .object([
                ("target", .string(target.label)),
                ("weight", .int(weights[index])),
                ("state", .string(name)),
                ("eligible", .bool(eligible.contains(index))),
                ("in_flight", .int(target.inFlight.load(ordering: .relaxed))),
                ("ejections", .int(state.ejections)),
                ("ejected_until", state.ejectedUntil.map(wall) ?? .null),
                ("last_probe", state.lastProbe.map { .object([("at", wall($0.at)), ("good", .bool($0.good))]) } ?? .null),
            ])
        }
        return .object([
            ("name", .string(name)),
            ("balancer", .string(policy.balancer.rawValue)),
            ("breaker", .string(Self.name(of: breakerState))),
            ("probes", .bool(policy.health.active != nil)),
            ("panic", .bool(health.isPanicking)),
            ("targets", .array(targetDocuments)),
        ])
    }
}
