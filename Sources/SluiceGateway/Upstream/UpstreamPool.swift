import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import SluiceCore
import Synchronization

/// Monotonic time as circuit breakers and retry budgets read it.
public typealias UptimeClock = @Sendable () -> ContinuousClock.Instant

/// Owns every upstream's runtime. A reload keeps a runtime (breaker state, budget, bulkhead)
/// whose upstream settings did not change, and a client whose connection settings did not;
/// replaced clients are shut down once no call uses them any more.
final class UpstreamPool: Service, Sendable {
    private struct State {
        var targets: [TargetKey: UpstreamTarget] = [:]
        var runtimes: [String: UpstreamRuntime] = [:]
        var retired: [UpstreamClient] = []
    }

    /// A target is kept across reloads by upstream and settings (its connections, bulkhead, counts).
    private struct TargetKey: Hashable {
        var upstream: String
        var settings: UpstreamTarget.Settings
    }

    private let state = Mutex(State())
    private let eventLoopGroup: any EventLoopGroup
    private let metrics: GatewayMetrics
    private let logger: Logger
    private let clock: UptimeClock

    /// - Parameter clock: What circuit breakers, retry budgets and target health read as now.
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
            var targets: [TargetKey: UpstreamTarget] = [:]
            var runtimes: [String: UpstreamRuntime] = [:]
            for (name, upstream) in policy.upstreams {
                var pool: [UpstreamTarget] = []
                for target in upstream.targets {
                    let key = TargetKey(
                        upstream: name,
                        settings: UpstreamTarget.Settings(
                            client: UpstreamClient.Settings(address: target.address, connectTimeout: upstream.connectTimeout, maxInFlight: upstream.maxInFlight),
                            queueTimeout: upstream.queueTimeout
                        )
                    )
                    if let known = targets[key] ?? state.targets[key] {
                        pool.append(known)
                        targets[key] = known
                        continue
                    }
                    do {
                        let client = try UpstreamClient(settings: key.settings.client, eventLoopGroup: eventLoopGroup)
                        let made = UpstreamTarget(settings: key.settings, upstream: name, client: client, metrics: metrics)
                        pool.append(made)
                        targets[key] = made
                    } catch {
                        throw PolicyErrors([PolicyProblem(target.location, "upstream \(name): cannot set up a client for \(target.address): \(error)")])
                    }
                }
                let existing = state.runtimes[name]
                if let existing, existing.targets.elementsEqual(pool, by: ===), Self.sameSettings(existing.policy, upstream) {
                    runtimes[name] = existing
                } else {
                    runtimes[name] = UpstreamRuntime(
                        policy: upstream, targets: pool, previous: existing, eventLoopGroup: eventLoopGroup, metrics: metrics, logger: logger, clock: clock
                    )
                }
            }
            for (key, target) in state.targets where targets[key] == nil { state.retired.append(target.client) }
            state.targets = targets
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
            return state.targets.values.map(\.client) + state.retired
        }
        for client in all { client.connections.shutdown() }
    }
}
