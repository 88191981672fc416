import NIOCore
import SluiceCore

/// The connections to one upstream address, sized by `max_in_flight`.
final class UpstreamClient: Sendable {
    /// What decides whether a reload can keep the client (and its warm connections).
    struct Settings: Hashable {
        /// Where to connect (for a target given by name: one of the addresses it resolved to).
        var address: UpstreamPolicy.Address
        /// The name a resolved address stands for: the `Host` and the TLS server name.
        var serverName: String?
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
            address: settings.address, serverName: settings.serverName, connectTimeout: settings.connectTimeout, maxIdlePerLoop: settings.maxInFlight,
            group: eventLoopGroup
        )
        let name = settings.serverName ?? settings.address.host
        let host = name.contains(":") ? "[\(name)]" : name
        let defaultPort = settings.address.useTLS ? 443 : 80
        authority = settings.address.port == defaultPort ? host : "\(host):\(settings.address.port)"
    }

    /// The upstream path for a request target: the base path, then the target.
    func path(for target: String) -> String {
        settings.address.basePath + target
    }
}
