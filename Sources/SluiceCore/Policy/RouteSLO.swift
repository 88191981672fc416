/// `slo:` on a route — its latency targets by quantile (SPEC §10), exported as
/// `sluice_route_slo_seconds{route,quantile}` so that one alert rule compares every route with
/// its own target: a synchronous route's request duration, an async route's task run time and
/// queue wait.
public struct RouteSLO: Sendable, Equatable {
    public enum Quantile: String, Sendable, CaseIterable {
        case p95, p99

        /// The quantile as Prometheus writes it (`histogram_quantile`'s φ, the `quantile` label).
        public var label: String {
            switch self {
            case .p95: "0.95"
            case .p99: "0.99"
            }
        }
    }

    /// The targets, in `Quantile` order; at least one.
    public var targets: [(quantile: Quantile, duration: Duration)]

    public static func == (lhs: RouteSLO, rhs: RouteSLO) -> Bool {
        lhs.targets.elementsEqual(rhs.targets) { $0.quantile == $1.quantile && $0.duration == $1.duration }
    }

    /// Reads `slo: { p95: 10m, p99: 20m }`; problems are reported on the values.
    static func read(_ value: YAMLValue, context: String) -> RouteSLO? {
        guard let map = value.mapping(context) else { return nil }
        let targets = Quantile.allCases.compactMap { quantile in
            map.optional(quantile.rawValue)?.duration("\(context) \(quantile.rawValue)").map { (quantile: quantile, duration: $0) }
        }
        map.finish()
        guard !targets.isEmpty else {
            if !Quantile.allCases.contains(where: { map.contains($0.rawValue) }) { value.report("\(context) needs a target: p95, p99 or both (like p95: 10m)") }
            return nil
        }
        return RouteSLO(targets: targets)
    }
}
