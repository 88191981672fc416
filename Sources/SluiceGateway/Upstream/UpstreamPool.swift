import AsyncHTTPClient
import Logging
import NIOCore
import ServiceLifecycle
import SluiceCore
import Synchronization

/// The HTTP client of one upstream: its own connection pool, sized by `max_in_flight`.
final class UpstreamClient: Sendable {
    /// What decides whether a reload can keep the client (and its warm connections).
    struct Settings: Hashable {
        var address: UpstreamPolicy.Address
        var connectTimeout: Duration
        var maxInFlight: Int
    }

    let settings: Settings
    let http: HTTPClient
    /// `scheme://host:port/base` without a trailing slash: request targets are appended.
    let baseURL: String
    private let inFlightCalls = Atomic<Int>(0)

    init(settings: Settings, eventLoopGroup: any EventLoopGroup) {
        self.settings = settings
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: TimeAmount(settings.connectTimeout), read: nil)
        configuration.redirectConfiguration = .disallow
        configuration.decompression = .disabled
        configuration.connectionPool = .init(
            idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: settings.maxInFlight
        )
        // A refused connection fails the call at once (502) instead of being retried until the
        // connect timeout; retries are the upstream's retry policy's business.
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.httpVersion = settings.address.useTLS ? .automatic : .http1Only
        http = HTTPClient(eventLoopGroupProvider: .shared(eventLoopGroup), configuration: configuration)
        let host = settings.address.host.contains(":") ? "[\(settings.address.host)]" : settings.address.host
        baseURL = "\(settings.address.useTLS ? "https" : "http")://\(host):\(settings.address.port)\(settings.address.basePath)"
    }

    var inFlight: Int { inFlightCalls.load(ordering: .relaxed) }

    /// Counts a call in flight while `body` runs, so a retired client is shut down only when idle.
    func tracking<T>(_ body: () async throws -> T) async rethrows -> T {
        inFlightCalls.add(1, ordering: .relaxed)
        defer { inFlightCalls.subtract(1, ordering: .relaxed) }
        return try await body()
    }
}

/// Owns every upstream client. A reload reuses a client whose connection settings did not
/// change; replaced clients are shut down once no call uses them any more.
final class UpstreamPool: Service, Sendable {
    private struct State {
        var clients: [UpstreamClient.Settings: UpstreamClient] = [:]
        var retired: [UpstreamClient] = []
        var isShutDown = false
    }

    private let state = Mutex(State())
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger

    init(eventLoopGroup: any EventLoopGroup, logger: Logger) {
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
    }

    /// Clients for every upstream of `policy`, by upstream name. Clients no longer needed are retired.
    func clients(for policy: PolicySet) -> [String: UpstreamClient] {
        state.withLock { state in
            var byName: [String: UpstreamClient] = [:]
            var kept: [UpstreamClient.Settings: UpstreamClient] = [:]
            for (name, upstream) in policy.upstreams {
                let settings = UpstreamClient.Settings(
                    address: upstream.address, connectTimeout: upstream.connectTimeout, maxInFlight: upstream.maxInFlight
                )
                let client = kept[settings] ?? state.clients[settings] ?? UpstreamClient(settings: settings, eventLoopGroup: eventLoopGroup)
                kept[settings] = client
                byName[name] = client
            }
            for (settings, client) in state.clients where kept[settings] == nil { state.retired.append(client) }
            state.clients = kept
            return byName
        }
    }

    /// Shuts retired clients down as they become idle; at shutdown, shuts every client down.
    func run() async throws {
        while await pauseUnlessShuttingDown(for: .seconds(1)) {
            let idle = state.withLock { state in
                let idle = state.retired.filter { $0.inFlight == 0 }
                state.retired.removeAll { $0.inFlight == 0 }
                return idle
            }
            for client in idle { try? await client.http.shutdown() }
        }
        let all = state.withLock { state in
            state.isShutDown = true
            defer { state.clients = [:]; state.retired = [] }
            return Array(state.clients.values) + state.retired
        }
        for client in all {
            do { try await client.http.shutdown() } catch { logger.debug("upstream client shutdown: \(error)") }
        }
    }
}
