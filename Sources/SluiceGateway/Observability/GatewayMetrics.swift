import NIOConcurrencyHelpers
import Prometheus
import SluiceCore
import NIOCore
import SluiceStore

/// The gateway's Prometheus metrics (SPEC §5), on a registry of its own so that several
/// gateways can run in one process (tests) without sharing counters.
final class GatewayMetrics: Sendable {
    let registry: PrometheusCollectorRegistry

    /// The label values of one request series.
    private struct RequestSeries: Hashable {
        let partner: String, version: String, route: String, status: Int
    }

    /// Handles already made, one table per event loop: a request costs one dictionary lookup on
    /// its own loop (no lock) rather than the registry's name building, label checks and lock.
    private let requestHandles: LoopLocal<[RequestSeries: (Counter, DurationHistogram)]>
    /// `sluice_cache_total` handles by route and result, per loop (a hit costs one lookup, no lock).
    private let cacheHandles: LoopLocal<[CacheSeries: Counter]>

    /// `sluice_quota_used_ratio` handles by partner, per loop.
    private let quotaHandles: LoopLocal<[String: Gauge]>

    private struct CacheSeries: Hashable {
        let route: String, result: String
    }

    private static var requestsDescriptor: MetricNameDescriptor { descriptor("requests", "total", "Partner requests by partner, version, route and status code.") }
    private static var durationDescriptor: MetricNameDescriptor { descriptor("request_duration", "seconds", "Time from request head to the end of the response.") }
    private static var upstreamDurationDescriptor: MetricNameDescriptor { descriptor("upstream_duration", "seconds", "Time until an upstream's response head.") }
    private static var reloadDescriptor: MetricNameDescriptor { descriptor("policy_reload", "total", "Policy reloads by result (ok or error).") }
    private static var rejectionsDescriptor: MetricNameDescriptor { descriptor("ratelimit_rejections", "total", "Requests refused by rate, quota or concurrency limits.") }
    private static var storeCallsDescriptor: MetricNameDescriptor { descriptor("store_calls", "total", "Commands sent to the rate-limit store (Redis round trips).") }
    private static var replicasDescriptor: MetricNameDescriptor {
        descriptor("store_replicas", "", "Replicas the Redis primary had when the gateway connected (durability: replicated).")
    }
    private static var topologyChangesDescriptor: MetricNameDescriptor {
        descriptor(
            "store_topology_changes", "total",
            "Changes of the Redis primary (switch-master, readonly, rediscovered) or of a cluster's slot map (moved, refreshed), by reason."
        )
    }
    private static var redirectsDescriptor: MetricNameDescriptor {
        descriptor("store_redirects", "total", "Redis Cluster redirects followed, by kind: moved, ask.")
    }
    private static var storeErrorsDescriptor: MetricNameDescriptor { descriptor("store_errors", "total", "Failed or timed-out calls to the store (request path and background loops).") }
    private static var fallbackDescriptor: MetricNameDescriptor { descriptor("ratelimit", "fallback", "1 while the store is unreachable and on_redis_failure applies.") }
    private static var breakerStateDescriptor: MetricNameDescriptor { descriptor("breaker", "state", "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open.") }
    private static var breakerTransitionsDescriptor: MetricNameDescriptor { descriptor("breaker_transitions", "total", "Circuit breaker state changes per upstream and new state.") }
    private static var idempotencyDescriptor: MetricNameDescriptor {
        descriptor("idempotency", "total", "Keyed requests by outcome: new, replayed, in_use, mismatch, released.")
    }
    private static var webhookDeliveriesDescriptor: MetricNameDescriptor {
        descriptor("webhook_deliveries", "total", "Webhook attempts by result: delivered, failed, gone (410), refused (address or endpoint), held.")
    }
    private static var webhooksDeadDescriptor: MetricNameDescriptor { descriptor("webhooks", "dead", "Webhook messages in the dead-letter queue.") }
    private static var tasksDescriptor: MetricNameDescriptor { descriptor("tasks", "", "Stored tasks by status, as the store counts them (all instances).") }
    private static var taskDurationDescriptor: MetricNameDescriptor {
        descriptor("task_duration", "seconds", "Time tasks spent queued (until a worker took them) and running (until their result), by route and phase.")
    }
    private static var queueOldestDescriptor: MetricNameDescriptor {
        descriptor("task_queue_oldest", "seconds", "How long the longest-waiting queued task has waited (0 when none waits).")
    }
    private static var queueOldestByRouteDescriptor: MetricNameDescriptor {
        descriptor("task_queue_oldest_by_route", "seconds", "How long each route's longest-waiting queued task has waited (0 when none of the route's waits).")
    }
    private static var spansDroppedDescriptor: MetricNameDescriptor {
        descriptor("trace_spans_dropped", "total", "Spans not exported because the export queue was full.")
    }
    private static var logLinesDroppedDescriptor: MetricNameDescriptor {
        descriptor("log_lines_dropped", "total", "Log lines (access and event) dropped because the log output did not keep up.")
    }
    private static var retriesDescriptor: MetricNameDescriptor { descriptor("upstream_retries", "total", "Retried upstream calls.") }
    private static var targetHealthyDescriptor: MetricNameDescriptor {
        descriptor("upstream_target_healthy", "", "1 while an upstream target takes calls (not ejected, probes good), else 0.")
    }
    private static var targetRequestsDescriptor: MetricNameDescriptor {
        descriptor("upstream_target_requests", "total", "Tries sent to each upstream target by outcome: ok, failed (connect error, timeout, reset, 502/503/504).")
    }
    private static var ejectionsDescriptor: MetricNameDescriptor {
        descriptor("upstream_ejections", "total", "Upstream targets taken out, by reason: consecutive-failures or probes.")
    }
    private static var noTargetDescriptor: MetricNameDescriptor {
        descriptor("upstream_no_target", "total", "Calls answered 503 because no target of the upstream could take them.")
    }
    private static var canaryAbortsDescriptor: MetricNameDescriptor {
        descriptor("canary_aborts", "total", "Route canaries given up because their error rate passed abort_on (share 0 until a reload).")
    }
    private static var deduplicatedDescriptor: MetricNameDescriptor {
        descriptor("tasks_deduplicated", "total", "Async requests answered with an identical earlier request's task (dedupe:), by route.")
    }
    private static var cacheDescriptor: MetricNameDescriptor {
        descriptor("cache", "total", "Requests on cached routes by result: hit, miss, stale, revalidated, coalesced, bypass.")
    }
    private static var quotaUsedDescriptor: MetricNameDescriptor {
        descriptor("quota_used", "ratio", "Share of the partner's quota (day or month) used, as of its latest admission decision on this instance.")
    }
    private static var reloadFailingDescriptor: MetricNameDescriptor {
        descriptor("policy_reload", "failing", "1 while the latest policy reload failed (the running policies stay), else 0.")
    }
    private static var sloDescriptor: MetricNameDescriptor {
        descriptor("route_slo", "seconds", "A route's latency target by quantile (slo: in routes.yaml); absent for routes without one.")
    }
    private static var certificateExpiryDescriptor: MetricNameDescriptor {
        descriptor("tls_certificate_expiry_timestamp", "seconds", "When the listener's certificate (https) or the earliest of its client CA's certificates (https-client-ca) expires.")
    }
    private static func descriptor(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "sluice", metricName: metric, unitName: unit, helpText: help)
    }

    private static let buckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2_500), .seconds(5), .seconds(10), .seconds(30),
        .seconds(60), .seconds(300),
    ]

    /// Tasks run for minutes: their phases get buckets up to an hour.
    private static let taskBuckets: [Duration] = [
        .milliseconds(10), .milliseconds(100), .milliseconds(500), .seconds(1), .seconds(5), .seconds(15), .seconds(30), .seconds(60),
        .seconds(120), .seconds(300), .seconds(600), .seconds(1_200), .seconds(1_800), .seconds(3_600),
    ]

    /// Commands sent to Redis; several requests' decisions share one.
    let storeCalls: Counter
    /// `sluice_idempotency_total` by result.
    private let idempotencyResults: [IdempotencyResult: Counter]
    /// `sluice_webhook_deliveries_total` by result.
    private let webhookResults: [WebhookAttemptResult: Counter]
    private let deadWebhooks: Gauge
    private let tasksByStatus: [TaskStatus: Gauge]
    private let queueOldest: Gauge
    /// `sluice_task_queue_oldest_by_route_seconds` of every route that had a queued task.
    private let queueOldestByRoute = NIOLockedValueBox<[String: Gauge]>([:])
    /// The gauges that follow the policies (route SLOs, certificate expiry), by metric and
    /// labels: a reload sets the new series and removes the ones the policies no longer have.
    private let policyGauges = NIOLockedValueBox<[PolicySeries: Gauge]>([:])

    private struct PolicySeries: Hashable {
        let metric: String
        let labels: [String]
    }

    /// - Parameter group: The loops that finish requests (each keeps its own handle table).
    init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), group: any EventLoopGroup) {
        self.registry = registry
        requestHandles = LoopLocal(group: group) { _ in [:] }
        cacheHandles = LoopLocal(group: group) { _ in [:] }
        quotaHandles = LoopLocal(group: group) { _ in [:] }
        storeCalls = registry.makeCounter(descriptor: Self.storeCallsDescriptor)
        idempotencyResults = IdempotencyResult.allCases.reduce(into: [:]) {
            $0[$1] = registry.makeCounter(descriptor: Self.idempotencyDescriptor, labels: [("result", $1.rawValue)])
        }
        webhookResults = WebhookAttemptResult.allCases.reduce(into: [:]) {
            $0[$1] = registry.makeCounter(descriptor: Self.webhookDeliveriesDescriptor, labels: [("result", $1.rawValue)])
        }
        deadWebhooks = registry.makeGauge(descriptor: Self.webhooksDeadDescriptor)
        tasksByStatus = TaskStatus.allCases.reduce(into: [:]) {
            $0[$1] = registry.makeGauge(descriptor: Self.tasksDescriptor, labels: [("status", $1.rawValue)])
        }
        queueOldest = registry.makeGauge(descriptor: Self.queueOldestDescriptor)
        for result in ["ok", "error"] { _ = registry.makeCounter(descriptor: Self.reloadDescriptor, labels: [("result", result)]) }
        _ = registry.makeCounter(descriptor: Self.storeErrorsDescriptor)
        _ = registry.makeCounter(descriptor: Self.spansDroppedDescriptor)
        _ = registry.makeCounter(descriptor: Self.logLinesDroppedDescriptor)
        registry.makeGauge(descriptor: Self.fallbackDescriptor).set(to: 0.0)
        registry.makeGauge(descriptor: Self.reloadFailingDescriptor).set(to: 0.0)
    }

    func rateLimitRejected(partner: String, reason: String) {
        registry.makeCounter(descriptor: Self.rejectionsDescriptor, labels: [("partner", partner), ("reason", reason)]).increment()
    }

    /// Sets `sluice_breaker_state{upstream}` and counts the transition.
    func breakerChanged(upstream: String, to state: CircuitBreaker<ContinuousClock.Instant>.State, isTransition: Bool) {
        let (value, name): (Double, String) = switch state {
        case .closed: (0, "closed")
        case .open: (1, "open")
        case .halfOpen: (2, "half-open")
        }
        registry.makeGauge(descriptor: Self.breakerStateDescriptor, labels: [("upstream", upstream)]).set(to: value)
        if isTransition {
            registry.makeCounter(descriptor: Self.breakerTransitionsDescriptor, labels: [("upstream", upstream), ("to", name)]).increment()
        }
    }

    func idempotency(_ result: IdempotencyResult) {
        idempotencyResults[result]?.increment()
    }

    func webhookAttempted(_ result: WebhookAttemptResult) {
        webhookResults[result]?.increment()
    }

    /// Sets `sluice_webhooks_dead`.
    func webhooksDead(_ count: Int) {
        deadWebhooks.set(to: Double(count))
    }

    /// Sets `sluice_tasks{status}`, `sluice_task_queue_oldest_seconds` and
    /// `sluice_task_queue_oldest_by_route_seconds{route}` from the store's census (a route seen
    /// before with nothing queued now reads 0).
    func taskCensus(_ census: TaskCensus, now: Int64) {
        func waited(_ since: Int64?) -> Double { since.map { Double(max(0, now - $0)) / 1_000 } ?? 0 }
        for (status, count) in census.counts { tasksByStatus[status]?.set(to: Double(count)) }
        queueOldest.set(to: waited(census.oldestQueuedAt))
        queueOldestByRoute.withLockedValue { gauges in
            for route in census.oldestQueuedAtByRoute.keys where gauges[route] == nil {
                gauges[route] = registry.makeGauge(descriptor: Self.queueOldestByRouteDescriptor, labels: [("route", route)])
            }
            for (route, gauge) in gauges { gauge.set(to: waited(census.oldestQueuedAtByRoute[route])) }
        }
    }

    /// Observes how long a task spent in a phase (`sluice_task_duration_seconds{route,phase}`).
    func taskPhaseEnded(route: String, phase: TaskPhase, milliseconds: Int64) {
        registry.makeDurationHistogram(
            descriptor: Self.taskDurationDescriptor, labels: [("route", route), ("phase", phase.rawValue)], buckets: Self.taskBuckets
        ).record(.milliseconds(max(0, milliseconds)))
    }

    func spansDropped(_ count: Int) {
        registry.makeCounter(descriptor: Self.spansDroppedDescriptor).increment(by: Int64(count))
    }

    func logLinesDropped(_ count: Int) {
        registry.makeCounter(descriptor: Self.logLinesDroppedDescriptor).increment(by: Int64(count))
    }

    func upstreamRetried(upstream: String) {
        registry.makeCounter(descriptor: Self.retriesDescriptor, labels: [("upstream", upstream)]).increment()
    }

    /// Replicas the primary had when the gateway connected (with `durability: replicated`).
    func storeReplicas(_ count: Int) {
        registry.makeGauge(descriptor: Self.replicasDescriptor).set(to: Double(count))
    }

    func storeTopologyChanged(reason: String) {
        registry.makeCounter(descriptor: Self.topologyChangesDescriptor, labels: [("reason", reason)]).increment()
    }

    /// A Redis Cluster node answered `MOVED` or `ASK` (rare: only while slots move).
    func storeRedirected(kind: String) {
        registry.makeCounter(descriptor: Self.redirectsDescriptor, labels: [("kind", kind)]).increment()
    }

    func storeFailed() {
        registry.makeCounter(descriptor: Self.storeErrorsDescriptor).increment()
    }

    func storeFallback(active: Bool) {
        registry.makeGauge(descriptor: Self.fallbackDescriptor).set(to: active ? 1.0 : 0.0)
    }

    /// Counts a finished partner request; call on `eventLoop`, the loop that served it. Unknown
    /// parts are labelled `-`.
    func requestFinished(partner: String?, version: String?, route: String?, status: Int, duration: Duration, on eventLoop: any EventLoop) {
        let series = RequestSeries(partner: partner ?? "-", version: version ?? "-", route: route ?? "-", status: status)
        let (counter, histogram) = Self.handle(in: requestHandles, series, on: eventLoop) { makeHandles(series) }
        counter.increment()
        histogram.record(duration)
    }

    private func makeHandles(_ series: RequestSeries) -> (Counter, DurationHistogram) {
        let labels = [("partner", series.partner), ("version", series.version), ("route", series.route)]
        return (
            registry.makeCounter(descriptor: Self.requestsDescriptor, labels: labels + [("code", String(series.status))]),
            registry.makeDurationHistogram(descriptor: Self.durationDescriptor, labels: labels, buckets: Self.buckets)
        )
    }

    /// The histogram of time until an upstream's response head; kept by the upstream's runtime.
    func upstreamDuration(upstream: String) -> DurationHistogram {
        registry.makeDurationHistogram(descriptor: Self.upstreamDurationDescriptor, labels: [("upstream", upstream)], buckets: Self.buckets)
    }

    /// The per-try counters of one target, made once per target: ok and failed.
    func targetRequests(upstream: String, target: String) -> (ok: Counter, failed: Counter) {
        let labels = [("upstream", upstream), ("target", target)]
        return (
            registry.makeCounter(descriptor: Self.targetRequestsDescriptor, labels: labels + [("outcome", "ok")]),
            registry.makeCounter(descriptor: Self.targetRequestsDescriptor, labels: labels + [("outcome", "failed")])
        )
    }

    func targetHealth(upstream: String, target: String, healthy: Bool) {
        registry.makeGauge(descriptor: Self.targetHealthyDescriptor, labels: [("upstream", upstream), ("target", target)]).set(to: healthy ? 1.0 : 0.0)
    }

    func targetEjected(upstream: String, target: String, reason: String) {
        registry.makeCounter(descriptor: Self.ejectionsDescriptor, labels: [("upstream", upstream), ("target", target), ("reason", reason)]).increment()
    }

    func noTarget(upstream: String) {
        registry.makeCounter(descriptor: Self.noTargetDescriptor, labels: [("upstream", upstream)]).increment()
    }

    func canaryAborted(route: String) {
        registry.makeCounter(descriptor: Self.canaryAbortsDescriptor, labels: [("route", route)]).increment()
    }

    func cacheResult(route: String, result: String, on eventLoop: any EventLoop) {
        let series = CacheSeries(route: route, result: result)
        Self.handle(in: cacheHandles, series, on: eventLoop) {
            registry.makeCounter(descriptor: Self.cacheDescriptor, labels: [("route", route), ("result", result)])
        }.increment()
    }

    /// Sets `sluice_quota_used_ratio{partner}` from an admission decision; call on `eventLoop`.
    func quotaUsed(partner: String, ratio: Double, on eventLoop: any EventLoop) {
        Self.handle(in: quotaHandles, partner, on: eventLoop) {
            registry.makeGauge(descriptor: Self.quotaUsedDescriptor, labels: [("partner", partner)])
        }.set(to: ratio)
    }

    /// `key`'s handle from `eventLoop`'s table, made once per loop: the request path takes no
    /// lock. A loop outside the group asks the registry, which hands out the same series.
    private static func handle<Key: Hashable, Handle>(
        in table: LoopLocal<[Key: Handle]>, _ key: Key, on eventLoop: any EventLoop, make: () -> Handle
    ) -> Handle {
        table.update(on: eventLoop) { handles in
            if let found = handles[key] { return found }
            let made = make()
            handles[key] = made
            return made
        } ?? make()
    }

    func taskDeduplicated(route: String) {
        registry.makeCounter(descriptor: Self.deduplicatedDescriptor, labels: [("route", route)]).increment()
    }

    /// Sets `sluice_route_slo_seconds{route,quantile}` and
    /// `sluice_tls_certificate_expiry_timestamp_seconds{listener}` from a policy set just applied;
    /// series of routes or listeners it no longer has go away.
    func policyApplied(_ policy: PolicySet, certificateExpiries: [String: Double]) {
        var wanted: [PolicySeries: (descriptor: MetricNameDescriptor, labels: [(String, String)], value: Double)] = [:]
        for route in policy.routes.routes {
            for target in route.slo?.targets ?? [] {
                let labels = [("route", route.id), ("quantile", target.quantile.label)]
                wanted[PolicySeries(metric: "slo", labels: labels.map(\.1))] = (Self.sloDescriptor, labels, Double(target.duration.milliseconds) / 1_000)
            }
        }
        for (listener, expiry) in certificateExpiries {
            wanted[PolicySeries(metric: "certificate", labels: [listener])] = (Self.certificateExpiryDescriptor, [("listener", listener)], expiry)
        }
        policyGauges.withLockedValue { gauges in
            for (series, gauge) in gauges where wanted[series] == nil {
                registry.unregisterGauge(gauge)
                gauges[series] = nil
            }
            for (series, value) in wanted {
                let gauge = gauges[series] ?? registry.makeGauge(descriptor: value.descriptor, labels: value.labels)
                gauge.set(to: value.value)
                gauges[series] = gauge
            }
        }
    }

    func policyReloaded(succeeded: Bool) {
        registry.makeCounter(descriptor: Self.reloadDescriptor, labels: [("result", succeeded ? "ok" : "error")]).increment()
        registry.makeGauge(descriptor: Self.reloadFailingDescriptor).set(to: succeeded ? 0.0 : 1.0)
    }

    /// Prometheus text exposition.
    func render() -> String { registry.emitToString() }
}

/// What happened to a request's idempotency key (`sluice_idempotency_total{result}`, access log).
enum IdempotencyResult: String, CaseIterable, Sendable {
    /// The key was claimed: the request runs.
    case new
    case replayed
    /// 409: a request with the key is still running.
    case inUse = "in_use"
    /// 422: the key was used for another request.
    case mismatch
    /// The claim was given up (5xx, timeout, client gone), so a retry runs again.
    case released
}

/// The long states of a task whose durations are observed (`sluice_task_duration_seconds{phase}`).
enum TaskPhase: String, Sendable {
    case queued
    case running
}

/// How a webhook attempt went (`sluice_webhook_deliveries_total{result}`).
enum WebhookAttemptResult: String, CaseIterable, Sendable {
    case delivered
    /// An error or a non-2xx answer other than 410 (retried, or dead after the last attempt).
    case failed
    /// 410: the partner's endpoint is disabled until the policies change.
    case gone
    /// Not sent: the address is not allowed, or the partner has no endpoint (dead at once).
    case refused
    /// Not sent: the endpoint is disabled; the message waits.
    case held
}
