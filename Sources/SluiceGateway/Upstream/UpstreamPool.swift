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
