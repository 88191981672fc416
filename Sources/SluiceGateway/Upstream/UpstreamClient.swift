import NIOCore
import SluiceCore

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
