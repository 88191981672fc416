import AsyncHTTPClient
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import SluiceCore
import Synchronization

/// Active health checks (SPEC §7 `health.active`) as one service: every target of every
/// upstream that configures probes gets a `GET path` every `interval` (less up to a tenth, so
/// that the instances and targets do not probe in lockstep), answered within `timeout`; a 2xx
/// is good, anything else (another status, a refused or hung connection) is bad. The answers
/// go to the upstream's `PoolHealth` through `UpstreamRuntime.probed`. Follows policy reloads:
/// each round reads the upstreams in force; a target keeps its schedule while its label does.
final class HealthProber: Service, Sendable {
    /// Which target a schedule entry is for.
    private struct Key: Hashable {
        var upstream: String
        var target: String
    }

    private let upstreams: @Sendable () -> [String: UpstreamRuntime]
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    /// Probes under way: a target whose probe is slower than its interval is not probed twice.
    private let probing = Mutex(Set<Key>())

    /// - Parameter upstreams: The upstream runtimes in force now.
    init(upstreams: @escaping @Sendable () -> [String: UpstreamRuntime], eventLoopGroup: any EventLoopGroup, logger: Logger) {
        self.upstreams = upstreams
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
    }

    func run() async throws {
        var configuration = HTTPClient.Configuration(redirectConfiguration: .disallow)
        configuration.connectionPool = .init(idleTimeout: .seconds(30), concurrentHTTP1ConnectionsPerHostSoftLimit: 1)
        configuration.decompression = .disabled
        let client = HTTPClient(eventLoopGroupProvider: .shared(eventLoopGroup), configuration: configuration, backgroundActivityLogger: logger)
        await withDiscardingTaskGroup { group in
            var due: [Key: ContinuousClock.Instant] = [:]
            repeat {
                let now = ContinuousClock.now
                var next: [Key: ContinuousClock.Instant] = [:]
                for runtime in upstreams().values {
                    guard let active = runtime.policy.health.active else { continue }
                    for (index, target) in runtime.targets.enumerated() {
                        let key = Key(upstream: runtime.name, target: target.label)
                        let at = due[key] ?? now
                        guard at <= now else {
                            next[key] = at
                            continue
                        }
                        next[key] = now.advanced(by: active.interval * Double.random(in: 0.9...1.0))
                        guard probing.withLock({ $0.insert(key).inserted }) else { continue }
                        group.addTask {
                            let good = await Self.probe(target, active, client: client)
                            runtime.probed(index, good: good)
                            self.probing.withLock { _ = $0.remove(key) }
                        }
                    }
                }
                due = next
            } while await pauseUnlessShuttingDown(for: Self.pause(until: due.values.min()))
            group.cancelAll()
        }
        try? await client.shutdown()
    }

    /// How long to sleep before the next round: until the next probe is due, at most a quarter
    /// second (so that a reload's new upstreams are probed soon).
    private static func pause(until next: ContinuousClock.Instant?) -> Duration {
        let most = Duration.milliseconds(250)
        guard let next else { return most }
        return max(.milliseconds(1), min(most, ContinuousClock.now.duration(to: next)))
    }

    /// One probe: whether `target` answered `GET path` with a 2xx within the timeout. It goes
    /// to the target's address; for an address a name resolved to, with the name as `Host`
    /// (over TLS the certificate chain is checked, its name cannot be: the URL holds the address).
    private static func probe(_ target: UpstreamTarget, _ active: UpstreamPolicy.Health.Active, client: HTTPClient) async -> Bool {
        let settings = target.settings.client
        let address = settings.address
        let host = address.host.contains(":") ? "[\(address.host)]" : address.host
        var request = HTTPClientRequest(url: "\(address.useTLS ? "https" : "http")://\(host):\(address.port)\(active.path)")
        request.headers.add(name: "User-Agent", value: "Sluice-Health/1")
        if settings.serverName != nil {
            request.headers.add(name: "Host", value: target.client.authority)
            if address.useTLS {
                var tls = TLSConfiguration.makeClientConfiguration()
                tls.certificateVerification = .noHostnameVerification
                request.tlsConfiguration = tls
            }
        }
        do {
            let response = try await client.execute(request, timeout: TimeAmount(active.timeout))
            guard (200..<300).contains(response.status.code) else { return false }
            for try await _ in response.body {}
            return true
        } catch {
            return false
        }
    }
}
