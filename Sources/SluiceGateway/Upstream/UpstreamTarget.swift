import Prometheus
import SluiceCore
import Synchronization

/// One address of an upstream pool (SPEC §7): its connections, its `max_in_flight` bulkhead,
/// and the counts the balancer and passive health read without a lock. Kept across reloads
/// while its address and connection settings do not change, so its warm connections stay.
final class UpstreamTarget: Sendable {
    /// What decides whether a reload can keep the target.
    struct Settings: Hashable {
        var client: UpstreamClient.Settings
        var queueTimeout: Duration
    }

    let settings: Settings
    let client: UpstreamClient
    let bulkhead: Bulkhead
    /// The target's label in metrics, logs and the admin API: `http://host:port`, and for an
    /// address a name resolved to, `http://name:port (address)`.
    let label: String
    /// Calls on this target now (least_request reads it).
    let inFlight = Atomic<Int>(0)
    /// The latency estimate least_request weighs (`LatencyEstimate`), in three atomics written
    /// without a lock: a sample lost among concurrent ones does not matter.
    private let latencyNanoseconds = Atomic<Int>(0)
    private let latencyLow = Atomic<Int>(0)
    private let latencySampledAt = Atomic<Int64>(0)
    /// Gateway-visible failures in a row (passive health).
    let failureStreak = Atomic<Int>(0)
    let okTries: Counter
    let failedTries: Counter

    var address: UpstreamPolicy.Address { settings.client.address }

    var latency: LatencyEstimate {
        LatencyEstimate(
            nanoseconds: latencyNanoseconds.load(ordering: .relaxed), low: latencyLow.load(ordering: .relaxed),
            sampledAt: latencySampledAt.load(ordering: .relaxed)
        )
    }

    /// A try on this target got its answer (or timed out) after `elapsed`, at `now` nanoseconds.
    func answered(after elapsed: Duration, at now: Int64) {
        let components = elapsed.components
        let next = latency.adding(sample: Int(components.seconds) * 1_000_000_000 + Int(components.attoseconds / 1_000_000_000), at: now)
        latencyNanoseconds.store(next.nanoseconds, ordering: .relaxed)
        latencyLow.store(next.low, ordering: .relaxed)
        latencySampledAt.store(next.sampledAt, ordering: .relaxed)
    }

    init(settings: Settings, upstream: String, client: UpstreamClient, metrics: GatewayMetrics) {
        self.settings = settings
        self.client = client
        bulkhead = Bulkhead(limit: settings.client.maxInFlight, queueTimeout: settings.queueTimeout)
        let address = settings.client.address
        let name = settings.client.serverName ?? address.host
        let host = name.contains(":") ? "[\(name)]" : name
        label = "\(address.useTLS ? "https" : "http")://\(host):\(address.port)" + (settings.client.serverName == nil ? "" : " (\(address.host))")
        let counters = metrics.targetRequests(upstream: upstream, target: label)
        okTries = counters.ok
        failedTries = counters.failed
    }
}
