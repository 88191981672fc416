import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import SluiceCore
import Synchronization

/// Monotonic time as circuit breakers and retry budgets read it.
public typealias UptimeClock = @Sendable () -> ContinuousClock.Instant

/// The connections to one upstream address, sized by `max_in_flight`.
final class UpstreamClient: Sendable {
    /// What decides whether a reload can keep the client (and its warm connections).
    struct Settings: Hashable {
        var address: UpstreamPolicy.Address
        var connectTimeout: Duration
        var maxInFlight: Int
    }

    let settings: Settings
    let connections: UpstreamConnectionPool
    /// `host:port` for the `Host` header.
    let authority: String

    init(settings: Settings, eventLoopGroup: any EventLoopGroup) throws {
        self.settings = settings
        connections = try UpstreamConnectionPool(
            address: settings.address, connectTimeout: settings.connectTimeout, maxIdlePerLoop: settings.maxInFlight, group: eventLoopGroup
        )
        let host = settings.address.host.contains(":") ? "[\(settings.address.host)]" : settings.address.host
        let defaultPort = settings.address.useTLS ? 443 : 80
        authority = settings.address.port == defaultPort ? host : "\(host):\(settings.address.port)"
    }

    /// The upstream path for a request target: the base path, then the target.
    func path(for target: String) -> String {
        settings.address.basePath + target
    }
}

/// Everything the gateway keeps per upstream: its client, circuit breaker, bulkhead and retry
/// budget. Kept across reloads while the upstream's settings do not change.
final class UpstreamRuntime: Sendable {
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

/// Owns every upstream's runtime. A reload keeps a runtime (breaker state, budget, bulkhead)
/// whose upstream settings did not change, and a client whose connection settings did not;
/// replaced clients are shut down once no call uses them any more.
final class UpstreamPool: Service, Sendable {
    private struct State {
        var clients: [UpstreamClient.Settings: UpstreamClient] = [:]
        var runtimes: [String: UpstreamRuntime] = [:]
        var retired: [UpstreamClient] = []
    }

    private let state = Mutex(State())
    private let eventLoopGroup: any EventLoopGroup
    private let metrics: GatewayMetrics
    private let logger: Logger
    private let clock: UptimeClock

    /// - Parameter clock: What circuit breakers and retry budgets read as now.
    init(eventLoopGroup: any EventLoopGroup, metrics: GatewayMetrics, logger: Logger, clock: @escaping UptimeClock) {
        self.eventLoopGroup = eventLoopGroup
        self.metrics = metrics
        self.logger = logger
        self.clock = clock
    }

    /// Runtimes for every upstream of `policy`, by upstream name; an upstream whose client
    /// cannot be set up (TLS) is a policy problem at its location.
    func runtimes(for policy: PolicySet) throws(PolicyErrors) -> [String: UpstreamRuntime] {
        try state.withLock { state throws(PolicyErrors) in
            var clients: [UpstreamClient.Settings: UpstreamClient] = [:]
            var runtimes: [String: UpstreamRuntime] = [:]
            for (name, upstream) in policy.upstreams {
                let settings = UpstreamClient.Settings(
                    address: upstream.address, connectTimeout: upstream.connectTimeout, maxInFlight: upstream.maxInFlight
                )
                let client: UpstreamClient
                if let known = clients[settings] ?? state.clients[settings] {
                    client = known
                } else {
                    do {
                        client = try UpstreamClient(settings: settings, eventLoopGroup: eventLoopGroup)
                    } catch {
                        throw PolicyErrors([PolicyProblem(upstream.location, "upstream \(name): cannot set up its client: \(error)")])
                    }
                }
                clients[settings] = client
                if let existing = state.runtimes[name], existing.client === client, Self.sameSettings(existing.policy, upstream) {
                    runtimes[name] = existing
                } else {
                    runtimes[name] = UpstreamRuntime(policy: upstream, client: client, metrics: metrics, logger: logger, clock: clock)
                }
            }
            for (settings, client) in state.clients where clients[settings] == nil { state.retired.append(client) }
            state.clients = clients
            state.runtimes = runtimes
            return runtimes
        }
    }

    private static func sameSettings(_ a: UpstreamPolicy, _ b: UpstreamPolicy) -> Bool {
        var a = a
        a.location = b.location
        return a == b
    }

    /// Closes the idle connections of retired clients (busy ones close when their call ends);
    /// at shutdown, of all clients.
    func run() async throws {
        while await pauseUnlessShuttingDown(for: .seconds(1)) {
            let retired = state.withLock { state in
                defer { state.retired = [] }
                return state.retired
            }
            for client in retired { client.connections.shutdown() }
        }
        let all = state.withLock { state in
            defer { state = State() }
            return Array(state.clients.values) + state.retired
        }
        for client in all { client.connections.shutdown() }
    }
}
