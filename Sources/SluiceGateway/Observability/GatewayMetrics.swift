import Prometheus

/// The gateway's Prometheus metrics (SPEC §5), on a registry of its own so that several
/// gateways can run in one process (tests) without sharing counters.
final class GatewayMetrics: Sendable {
    let registry: PrometheusCollectorRegistry

    private static var requestsDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "sluice", metricName: "requests", unitName: "total", helpText: "Partner requests by partner, version, route and status code."
        )
    }
    private static var durationDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "sluice", metricName: "request_duration", unitName: "seconds", helpText: "Time from request head to the end of the response."
        )
    }
    private static var upstreamDurationDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "sluice", metricName: "upstream_duration", unitName: "seconds", helpText: "Time until an upstream's response head."
        )
    }
    private static var reloadDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "sluice", metricName: "policy_reload", unitName: "total", helpText: "Policy reloads by result (ok or error)."
        )
    }
    private static var rejectionsDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "sluice", metricName: "ratelimit_rejections", unitName: "total", helpText: "Requests refused by rate, quota or concurrency limits."
        )
    }
    private static var storeErrorsDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "sluice", metricName: "store_errors", unitName: "total", helpText: "Failed or timed-out calls to the rate-limit store."
        )
    }
    private static var fallbackDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "sluice", metricName: "ratelimit", unitName: "fallback", helpText: "1 while the store is unreachable and on_redis_failure applies."
        )
    }
    private static let buckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2_500), .seconds(5), .seconds(10), .seconds(30),
        .seconds(60), .seconds(300),
    ]

    init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        for result in ["ok", "error"] { _ = registry.makeCounter(descriptor: Self.reloadDescriptor, labels: [("result", result)]) }
        _ = registry.makeCounter(descriptor: Self.storeErrorsDescriptor)
        registry.makeGauge(descriptor: Self.fallbackDescriptor).set(to: 0.0)
    }

    func rateLimitRejected(partner: String, reason: String) {
        registry.makeCounter(descriptor: Self.rejectionsDescriptor, labels: [("partner", partner), ("reason", reason)]).increment()
    }

    func storeFailed() {
        registry.makeCounter(descriptor: Self.storeErrorsDescriptor).increment()
    }

    func storeFallback(active: Bool) {
        registry.makeGauge(descriptor: Self.fallbackDescriptor).set(to: active ? 1.0 : 0.0)
    }

    /// Counts a finished partner request. Unknown parts are labelled `-`.
    func requestFinished(partner: String?, version: String?, route: String?, status: Int, duration: Duration) {
        let partner = partner ?? "-", version = version ?? "-", route = route ?? "-"
        registry.makeCounter(
            descriptor: Self.requestsDescriptor,
            labels: [("partner", partner), ("version", version), ("route", route), ("code", String(status))]
        ).increment()
        registry.makeDurationHistogram(
            descriptor: Self.durationDescriptor, labels: [("partner", partner), ("version", version), ("route", route)], buckets: Self.buckets
        ).record(duration)
    }

    func upstreamResponded(upstream: String, after duration: Duration) {
        registry.makeDurationHistogram(descriptor: Self.upstreamDurationDescriptor, labels: [("upstream", upstream)], buckets: Self.buckets)
            .record(duration)
    }

    func policyReloaded(succeeded: Bool) {
        registry.makeCounter(descriptor: Self.reloadDescriptor, labels: [("result", succeeded ? "ok" : "error")]).increment()
    }

    /// Prometheus text exposition.
    func render() -> String { registry.emitToString() }
}
