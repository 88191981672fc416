import Hummingbird
public import Logging
public import CoreMetrics
import Prometheus
import NIOCore
import NIOPosix
import ServiceLifecycle
public import SluiceCore
public import SluiceStore
import Synchronization

/// A running Sluice gateway: the partner listeners (HTTPS and optional plain HTTP), the
/// admin listener, the policy watcher, upstream clients and log flushing, as services of one
/// `ServiceGroup`. SIGTERM/SIGINT (or `shutdown()`) turn `/readyz` to 503, stop accepting,
/// let in-flight requests finish for up to 30 s, then stop the rest.
public final class Gateway: Sendable {
    public struct Options: Sendable {
        /// How often the policy folder is checked for changes.
        public var watchInterval: Duration = .seconds(1)
        /// Longest wait for in-flight requests when shutting down.
        public var shutdownTimeout: Duration = .seconds(30)
        /// Drain on SIGTERM and SIGINT (off in tests that run several gateways in one process).
        public var handleSignals = true
        /// Log lines written here are flushed a few times a second and at shutdown.
        public var logOutput: LogOutput?
        /// How long a concurrency slot outlives a gateway that stopped renewing it (crashed).
        public var leaseDuration: Duration = .seconds(30)
        /// How much longer than its route's `request_timeout` an idempotency claim lasts: a
        /// crashed gateway's claim frees itself after that; a running request's claim is renewed
        /// every third of it, however long its response streams.
        public var claimLeaseMargin: Duration = .seconds(60)
        /// The clock of the embedded store and of the local fallback, epoch milliseconds (tests
        /// inject a manual one; the Redis store always uses Redis `TIME`).
        public var storeClock: EpochClock = MemoryStore.wallClock
        /// What circuit breakers and retry budgets read as now (tests inject a manual one;
        /// timeouts always run on the event loops' real timers).
        public var resilienceClock: UptimeClock = { .now }
        /// How often the gauges read from the store (`sluice_tasks`, `sluice_task_queue_oldest_seconds`,
        /// `sluice_webhooks_dead`) are refreshed.
        public var storeGaugeInterval: Duration = .seconds(15)
        /// How often usage counts are written to the store.
        public var usageFlushInterval: Duration = .seconds(1)
        /// How often ended spans are exported (with `tracing.otlp_endpoint`).
        public var traceExportInterval: Duration = .seconds(1)
        /// How upstream target names become addresses (tests map names to loopback addresses).
        public var resolver: HostResolver = UpstreamPool.systemResolver

        public init() {}
    }

    /// Where the listeners ended up (useful when the policy asks for port 0).
    public struct Addresses: Sendable {
        public var https: Int?
        public var http: Int?
        public var admin: Int?
    }

    private let directory: String
    private let options: Options
    let runtime: GatewayRuntime
    private let pool: UpstreamPool
    private let group: ServiceGroup
    private let bound: BoundListeners

    /// Loads and validates the policies; nothing listens until `run()`.
    public init(policiesDirectory: String, environment: [String: String], logger: Logger, options: Options = Options()) throws(PolicyErrors) {
        self.directory = policiesDirectory
        self.options = options
        let eventLoopGroup = MultiThreadedEventLoopGroup.singleton
        let policy = try PolicyLoader.load(directory: policiesDirectory, environment: environment)
        let metrics = GatewayMetrics(group: eventLoopGroup)
        let stores = StoreRegistry(
            group: eventLoopGroup, leaseDuration: options.leaseDuration, claimMargin: options.claimLeaseMargin, clock: options.storeClock,
            metrics: metrics, logger: logger
        )
        let pool = UpstreamPool(eventLoopGroup: eventLoopGroup, metrics: metrics, logger: logger, clock: options.resilienceClock, resolver: options.resolver)
        pool.resolveNewNamesNow(in: policy)
        let instance = InstanceName.make()
        let wakeUp = WorkerWakeUp()
        let webhooksWakeUp = WorkerWakeUp()
        let identifiers = IdentifierGenerator()
        let factory = SnapshotFactory(
            pool: pool, stores: stores, metrics: metrics, logger: logger, leaseDuration: options.leaseDuration,
            claimLeaseMargin: options.claimLeaseMargin, instance: instance,
            wakeWorkers: { wakeUp.wake() }, clock: options.storeClock, identifiers: identifiers
        )
        let accessLog = AccessLog(output: options.logOutput, logger: logger, group: eventLoopGroup)
        let usage = UsageCounter(group: eventLoopGroup, clock: options.storeClock)
        let tracing: GatewayTracing
        let traceExport: (any Service)?
        do {
            (tracing, traceExport) = try GatewayTracing.make(
                policy.gateway.tracing, exportInterval: options.traceExportInterval, logger: logger, metrics: metrics
            )
        } catch {
            throw PolicyErrors([PolicyProblem(SourceLocation(file: "gateway.yaml", line: 1, column: 1), "tracing: cannot set up the OTLP exporter: \(error)")])
        }
        let runtime = GatewayRuntime(
            snapshot: try factory.make(policy), identifiers: identifiers, metrics: metrics, logger: logger, accessLog: accessLog, usage: usage, tracing: tracing
        )
        self.pool = pool
        self.runtime = runtime
        let reloader = PolicyReloader(directory: policiesDirectory, environment: environment, runtime: runtime, factory: factory)
        let listen = policy.gateway.listen
        let bound = BoundListeners(expected: [listen.https, listen.http, listen.admin].compactMap { $0 }.count)
        self.bound = bound

        var services: [any Service] = []
        if let output = options.logOutput { services.append(LogFlusher(output: output, accessLog: accessLog, metrics: metrics)) }
        // Stopped after everything that ends spans.
        if let traceExport { services.append(traceExport) }
        services.append(pool)
        services.append(TargetNameRefresher(pool: pool, snapshots: runtime.snapshots, logger: logger))
        services.append(HealthProber(upstreams: { runtime.snapshots.load().upstreams }, eventLoopGroup: eventLoopGroup, logger: logger))
        services.append(stores)
        services.append(UsageFlusher(counter: usage, runtime: runtime, interval: options.usageFlushInterval))
        let record: @Sendable (String, any Channel) -> Void = { name, channel in bound.record(name, port: channel.localAddress?.port) }
        if let admin = listen.admin {
            let api = AdminAPI(runtime: runtime, reload: { await reloader.reload(reason: "admin API") })
            services.append(
                Application(
                    responder: api.responder(),
                    configuration: .init(address: .hostname(admin.host, port: admin.port), serverName: nil),
                    onServerRunning: { record("admin", $0) },
                    eventLoopGroupProvider: .shared(eventLoopGroup),
                    logger: logger
                )
            )
        }
        services.append(PolicyWatcher(reloader: reloader, interval: options.watchInterval))
        services.append(
            TaskWorkers(
                runtime: runtime, instance: instance, wakeUp: wakeUp, webhooksWakeUp: webhooksWakeUp, clock: options.storeClock,
                drainTimeout: options.shutdownTimeout / 2,
                censusInterval: options.storeGaugeInterval, group: eventLoopGroup
            )
        )
        let webhookClient: WebhookClient
        do {
            webhookClient = try WebhookClient(group: eventLoopGroup)
        } catch {
            throw PolicyErrors([PolicyProblem(SourceLocation(file: policiesDirectory, line: 1, column: 1), "webhooks: cannot set up the TLS client: \(error)")])
        }
        services.append(WebhookSender(runtime: runtime, client: webhookClient, clock: options.storeClock, deadCountInterval: options.storeGaugeInterval, wakeUp: webhooksWakeUp))
        for (name, address, useTLS) in [("https", listen.https, true), ("http", listen.http, false)] {
            guard let address else { continue }
            services.append(PartnerListener(name: name, address: address, useTLS: useTLS, runtime: runtime, group: eventLoopGroup, onBound: record))
        }
        services.append(DrainOnShutdown(runtime: runtime))

        var configuration = ServiceGroupConfiguration(
            services: services,
            gracefulShutdownSignals: options.handleSignals ? [.sigterm, .sigint] : [],
            logger: logger
        )
        configuration.maximumGracefulShutdownDuration = options.shutdownTimeout
        configuration.maximumCancellationDuration = .seconds(5)
        group = ServiceGroup(configuration: configuration)
    }

    /// A swift-metrics factory that reports into this gateway's `/metrics`, for
    /// `MetricsSystem.bootstrap` (once per process), so that libraries' metrics show up there too.
    public var metricsFactory: any MetricsFactory {
        PrometheusMetricsFactory(registry: runtime.metrics.registry)
    }

    /// Runs until shutdown; throws when a listener cannot bind.
    public func run() async throws {
        try await group.run()
    }

    /// Starts a graceful shutdown, as SIGTERM does.
    public func shutdown() async {
        await group.triggerGracefulShutdown()
    }

    /// Writes buffered log lines out now.
    func flushLogs() {
        runtime.accessLog.flushBlocking()
        options.logOutput?.flush()
    }

    /// Waits until every listener is bound and returns the ports.
    public func addresses() async -> Addresses {
        await bound.wait()
    }
}

/// Collects the ports of bound listeners for `Gateway.addresses()`.
private final class BoundListeners: Sendable {
    private struct State {
        var addresses = Gateway.Addresses()
        var count = 0
        var waiters: [CheckedContinuation<Gateway.Addresses, Never>] = []
    }

    private let state = Mutex(State())
    private let expected: Int

    init(expected: Int) {
        self.expected = expected
    }

    func record(_ name: String, port: Int?) {
        let (waiters, addresses): ([CheckedContinuation<Gateway.Addresses, Never>], Gateway.Addresses) = state.withLock { state in
            switch name {
            case "https": state.addresses.https = port
            case "http": state.addresses.http = port
            default: state.addresses.admin = port
            }
            state.count += 1
            guard state.count >= expected else { return ([], state.addresses) }
            defer { state.waiters = [] }
            return (state.waiters, state.addresses)
        }
        for waiter in waiters { waiter.resume(returning: addresses) }
    }

    func wait() async -> Gateway.Addresses {
        await withCheckedContinuation { continuation in
            let ready: Gateway.Addresses? = state.withLock { state in
                if state.count >= expected { return state.addresses }
                state.waiters.append(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
