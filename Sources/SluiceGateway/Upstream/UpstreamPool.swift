import Foundation
import Logging
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import SluiceCore
import Synchronization

/// Monotonic time as circuit breakers and retry budgets read it.
public typealias UptimeClock = @Sendable () -> ContinuousClock.Instant

/// Turns a host name into its addresses (A and AAAA records, as IP literals); blocking.
public typealias HostResolver = @Sendable (_ host: String) -> [String]

/// Owns every upstream's runtime. A reload keeps a runtime (breaker state, budget, bulkhead)
/// whose upstream settings did not change, and a client whose connection settings did not;
/// replaced clients are shut down once no call uses them any more.
final class UpstreamPool: Service, Sendable {
    private struct State {
        var targets: [TargetKey: UpstreamTarget] = [:]
        var runtimes: [String: UpstreamRuntime] = [:]
        var retired: [UpstreamClient] = []
        /// The addresses each target name resolved to last, and when.
        var resolved: [String: (addresses: [String], at: ContinuousClock.Instant)] = [:]
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
    let resolver: HostResolver

    /// - Parameters:
    ///   - clock: What circuit breakers, retry budgets and target health read as now.
    ///   - resolver: How target names become addresses (`getaddrinfo` unless a test injects one).
    init(
        eventLoopGroup: any EventLoopGroup, metrics: GatewayMetrics, logger: Logger, clock: @escaping UptimeClock,
        resolver: @escaping HostResolver = UpstreamPool.systemResolver
    ) {
        self.eventLoopGroup = eventLoopGroup
        self.metrics = metrics
        self.logger = logger
        self.clock = clock
        self.resolver = resolver
    }

    /// Resolves the target names of `policy` that were never resolved, on NIO's blocking-I/O
    /// thread pool (a slow resolver holds up no task or event-loop thread), and records the
    /// answers for `runtimes(for:)`. A name that resolves to nothing is logged and has no
    /// target until it does (`TargetNameRefresher` asks again).
    func resolveNewNames(in policy: PolicySet) async {
        let names = namesNeverResolved(in: policy)
        guard !names.isEmpty else { return }
        let resolver = self.resolver
        record(firstAnswers: (try? await NIOThreadPool.singleton.runIfActive { names.map { ($0, resolver($0)) } }) ?? [])
    }

    /// `resolveNewNames(in:)` on the calling thread: at start, before anything is served.
    func resolveNewNamesNow(in policy: PolicySet) {
        record(firstAnswers: namesNeverResolved(in: policy).map { ($0, resolver($0)) })
    }

    private func namesNeverResolved(in policy: PolicySet) -> [String] {
        let names = Set(policy.upstreams.values.flatMap { $0.targets.map(\.address.host) }.filter { !$0.isIPAddress })
        return state.withLock { state in names.filter { state.resolved[$0] == nil }.sorted() }
    }

    private func record(firstAnswers answers: [(name: String, addresses: [String])]) {
        for (name, addresses) in answers where addresses.isEmpty {
            logger.warning("upstream target name does not resolve; it has no target until it does", metadata: ["name": .string(name)])
        }
        state.withLock { state in
            for (name, addresses) in answers where state.resolved[name] == nil { state.resolved[name] = (addresses, .now) }
        }
    }

    /// Runtimes for every upstream of `policy`, by upstream name; an upstream whose client
    /// cannot be set up (TLS) is a policy problem at its location. A target given by name
    /// stands for every address it resolved to last (`resolveNewNames(in:)` first, for names
    /// never resolved; until then such a name has no target).
    func runtimes(for policy: PolicySet) throws(PolicyErrors) -> [String: UpstreamRuntime] {
        try state.withLock { state throws(PolicyErrors) in
            var targets: [TargetKey: UpstreamTarget] = [:]
            var runtimes: [String: UpstreamRuntime] = [:]
            for (name, upstream) in policy.upstreams {
                var pool: [UpstreamTarget] = []
                var weights: [Int] = []
                for target in upstream.targets {
                    for key in Self.keys(of: target, upstream: upstream, resolved: state.resolved) where pool.count < TargetSet.capacity {
                        if let known = targets[key] ?? state.targets[key] {
                            pool.append(known)
                            weights.append(target.weight)
                            targets[key] = known
                            continue
                        }
                        do {
                            let client = try UpstreamClient(settings: key.settings.client, eventLoopGroup: eventLoopGroup)
                            let made = UpstreamTarget(settings: key.settings, upstream: name, client: client, metrics: metrics)
                            pool.append(made)
                            weights.append(target.weight)
                            targets[key] = made
                        } catch {
                            throw PolicyErrors([PolicyProblem(target.location, "upstream \(name): cannot set up a client for \(target.address): \(error)")])
                        }
                    }
                }
                let existing = state.runtimes[name]
                if let existing, existing.targets.elementsEqual(pool, by: ===), existing.weights == weights, Self.sameSettings(existing.policy, upstream) {
                    runtimes[name] = existing
                } else {
                    runtimes[name] = UpstreamRuntime(
                        policy: upstream, targets: pool, weights: weights, previous: existing, eventLoopGroup: eventLoopGroup, metrics: metrics,
                        logger: logger, clock: clock
                    )
                }
            }
            for (key, target) in state.targets where targets[key] == nil { state.retired.append(target.client) }
            state.targets = targets
            state.runtimes = runtimes
            return runtimes
        }
    }

    /// The target keys of one policy target: itself for an IP literal, one per address for a name.
    private static func keys(
        of target: UpstreamPolicy.Target, upstream: UpstreamPolicy, resolved: [String: (addresses: [String], at: ContinuousClock.Instant)]
    ) -> [TargetKey] {
        func key(_ address: UpstreamPolicy.Address, serverName: String?) -> TargetKey {
            TargetKey(
                upstream: upstream.name,
                settings: UpstreamTarget.Settings(
                    client: UpstreamClient.Settings(
                        address: address, serverName: serverName, connectTimeout: upstream.connectTimeout, maxInFlight: upstream.maxInFlight
                    ),
                    queueTimeout: upstream.queueTimeout
                )
            )
        }
        let name = target.address.host
        guard !name.isIPAddress else { return [key(target.address, serverName: nil)] }
        return (resolved[name]?.addresses ?? []).map { ip in
            var address = target.address
            address.host = ip
            return key(address, serverName: name)
        }
    }

    /// The target names of `policy` whose last resolution is older than their upstream's
    /// `dns_refresh`.
    func namesDue(in policy: PolicySet, now: ContinuousClock.Instant) -> [String] {
        var refresh: [String: Duration] = [:]
        for upstream in policy.upstreams.values {
            for target in upstream.targets where !target.address.host.isIPAddress {
                refresh[target.address.host] = min(refresh[target.address.host] ?? upstream.dnsRefresh, upstream.dnsRefresh)
            }
        }
        return state.withLock { state in
            refresh.filter { name, every in (state.resolved[name]?.at).map { $0.advanced(by: every) <= now } ?? true }.map(\.key).sorted()
        }
    }

    /// The addresses `name` resolved to last (none if never).
    func lastAddresses(of name: String) -> [String] {
        state.withLock { $0.resolved[name]?.addresses ?? [] }
    }

    /// Records a name's new resolution; true when its addresses changed (the runtimes need
    /// making again: added addresses join, removed ones drain).
    func resolved(_ name: String, to addresses: [String], at now: ContinuousClock.Instant) -> Bool {
        state.withLock { state in
            let before = state.resolved[name]?.addresses
            state.resolved[name] = (addresses, now)
            return before.map(Set.init) != Set(addresses)
        }
    }

    /// `getaddrinfo` for TCP: every distinct IPv4 and IPv6 address, in the order given.
    static let systemResolver: HostResolver = { host in
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else { return [] }
        defer { freeaddrinfo(list) }
        var addresses: [String] = []
        for entry in sequence(first: first, next: { $0.pointee.ai_next }) {
            guard let socketAddress = entry.pointee.ai_addr, let ip = UpstreamPool.text(of: socketAddress), !addresses.contains(ip) else { continue }
            addresses.append(ip)
        }
        return addresses
    }

    /// The IP literal of an IPv4 or IPv6 socket address.
    private static func text(of address: UnsafePointer<sockaddr>) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let written: UnsafePointer<CChar>? =
            switch Int32(address.pointee.sa_family) {
            case AF_INET:
                address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 in
                    withUnsafePointer(to: v4.pointee.sin_addr) { inet_ntop(AF_INET, $0, &buffer, socklen_t(buffer.count)) }
                }
            case AF_INET6:
                address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 in
                    withUnsafePointer(to: v6.pointee.sin6_addr) { inet_ntop(AF_INET6, $0, &buffer, socklen_t(buffer.count)) }
                }
            default: nil
            }
        guard written != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
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
