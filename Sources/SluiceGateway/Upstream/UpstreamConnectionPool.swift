import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import SluiceCore
import SluiceStore
import Synchronization

/// Keep-alive HTTP/1.1 connections to one upstream address, kept per event loop: a request
/// served on an event loop uses a connection of that same loop, so forwarding never crosses
/// threads and needs no locks. Idle connections close after a minute, or when the upstream
/// closes them.
final class UpstreamConnectionPool: Sendable {
    /// A connection at once, or one being opened.
    enum Lease {
        case ready(UpstreamConnection)
        case connecting(EventLoopFuture<UpstreamConnection>)
    }

    private let address: UpstreamPolicy.Address
    /// The TLS server name (SNI and certificate check): the target's name, nil for an IP literal.
    private let serverHostname: String?
    private let connectTimeout: Duration
    private let maxIdlePerLoop: Int
    private let tlsContext: NIOSSLContext?
    private let locals: LoopLocal<LocalPool>
    private let isShutDown = Atomic(false)

    static let idleTimeout: TimeAmount = .seconds(60)

    init(address: UpstreamPolicy.Address, serverName: String?, connectTimeout: Duration, maxIdlePerLoop: Int, group: any EventLoopGroup) throws {
        self.address = address
        let name = serverName ?? address.host
        serverHostname = name.isIPAddress ? nil : name
        self.connectTimeout = connectTimeout
        self.maxIdlePerLoop = maxIdlePerLoop
        if address.useTLS {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.applicationProtocols = ["http/1.1"]
            tlsContext = try NIOSSLContext(configuration: configuration)
        } else {
            tlsContext = nil
        }
        locals = LoopLocal(group: group) { LocalPool(eventLoop: $0) }
    }

    /// An idle connection of `eventLoop`, or a new one. Call on `eventLoop`.
    func lease(on eventLoop: any EventLoop) -> Lease {
        if let idle = locals[eventLoop]?.takeIdle() { return .ready(idle) }
        return .connecting(connect(on: eventLoop))
    }

    /// Takes back a connection whose last exchange ended cleanly. Call on its event loop.
    func giveBack(_ connection: UpstreamConnection) {
        guard connection.isReusable, connection.isOpen, !isShutDown.load(ordering: .relaxed), let local = locals[connection.channel.eventLoop],
            local.put(connection, max: maxIdlePerLoop)
        else {
            connection.close()
            return
        }
    }

    /// Closes every idle connection; connections in use close when their exchange ends.
    func shutdown() {
        isShutDown.store(true, ordering: .relaxed)
        locals.forEach { eventLoop, local in eventLoop.execute { local.closeAll() } }
    }

    private func connect(on eventLoop: any EventLoop) -> EventLoopFuture<UpstreamConnection> {
        let tlsContext = tlsContext
        let serverHostname = serverHostname
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(connectTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    if let tlsContext {
                        try operations.addHandler(NIOSSLClientHandler(context: tlsContext, serverHostname: serverHostname))
                    }
                    // Header validation is the partner side's job (llhttp, HPACK): what goes
                    // upstream is the partner's validated headers plus the gateway's own, whose
                    // framing (Content-Length or chunked) the call sets itself.
                    var encoder = HTTPRequestEncoder.Configuration()
                    encoder.automaticallySetFramingHeaders = false
                    try operations.addHTTPClientHandlers(
                        leftOverBytesStrategy: .dropBytes, enableOutboundHeaderValidation: false, encoderConfiguration: encoder
                    )
                    try operations.addHandler(UpstreamConnectionHandler())
                }
            }
            .connect(host: address.host, port: address.port)
            .flatMapThrowing { channel in
                let handler = try channel.pipeline.syncOperations.handler(type: UpstreamConnectionHandler.self)
                return UpstreamConnection(channel: channel, handler: handler)
            }
    }
}

/// One event loop's idle connections; used only on that loop.
private final class LocalPool: @unchecked Sendable {
    let eventLoop: any EventLoop
    private var idle: [UpstreamConnection] = []
    private var sweeper: RepeatedTask?

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func takeIdle() -> UpstreamConnection? {
        eventLoop.assertInEventLoop()
        let now = NIODeadline.now()
        while let connection = idle.popLast() {
            if connection.isOpen, now - connection.idleSince < UpstreamConnectionPool.idleTimeout - .seconds(5) {
                return connection
            }
            connection.close()
        }
        return nil
    }

    /// Keeps `connection` unless `max` are idle already.
    func put(_ connection: UpstreamConnection, max: Int) -> Bool {
        eventLoop.assertInEventLoop()
        guard idle.count < max else { return false }
        connection.idleSince = .now()
        if connection.onClosedWhileIdle == nil {
            // Set once per connection: it only runs while the connection has no user.
            connection.onClosedWhileIdle = { [weak self, unowned connection] in
                self?.idle.removeAll { $0 === connection }
            }
        }
        idle.append(connection)
        if sweeper == nil {
            sweeper = eventLoop.scheduleRepeatedTask(initialDelay: .seconds(15), delay: .seconds(15)) { [self] _ in sweep() }
        }
        return true
    }

    func closeAll() {
        sweeper?.cancel()
        sweeper = nil
        let connections = idle
        idle = []
        for connection in connections {
            connection.onClosedWhileIdle = nil
            connection.close()
        }
    }

    private func sweep() {
        let now = NIODeadline.now()
        let (stale, fresh) = idle.reduce(into: ([UpstreamConnection](), [UpstreamConnection]())) { split, connection in
            if now - connection.idleSince >= UpstreamConnectionPool.idleTimeout {
                split.0.append(connection)
            } else {
                split.1.append(connection)
            }
        }
        idle = fresh
        for connection in stale {
            connection.onClosedWhileIdle = nil
            connection.close()
        }
    }
}

extension String {
    /// An IPv4 or IPv6 literal (no TLS server name for those).
    var isIPAddress: Bool {
        (try? SocketAddress(ipAddress: self, port: 0)) != nil
    }
}
