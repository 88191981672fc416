import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle
import SluiceCore
import Synchronization

/// A partner listener (`listen.https` or `listen.http`) on SwiftNIO channel handlers
/// (`PartnerPipeline`). On graceful shutdown it stops accepting and asks every connection to
/// quiesce — HTTP/1.1 connections close when idle or after their response (which says
/// `Connection: close`), HTTP/2 ones send GOAWAY and close when their streams are done — and
/// returns once all are closed. Cancelled (the shutdown took too long), it closes what is left.
struct PartnerListener: Service {
    let name: String
    let address: ListenAddress
    let useTLS: Bool
    let runtime: GatewayRuntime
    let group: any EventLoopGroup
    /// Called with the bound server channel.
    let onBound: @Sendable (String, any Channel) -> Void

    func run() async throws {
        let quiescing = ServerQuiescingHelper(group: group)
        let connections = OpenConnections()
        let (useTLS, runtime) = (useTLS, runtime)
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                connections.add(channel)
                return channel.eventLoop.makeCompletedFuture { try PartnerPipeline.configure(channel, useTLS: useTLS, runtime: runtime) }
            }
            .bind(host: address.host, port: address.port)
            .get()
        onBound(name, server)
        try? await gracefulShutdown()
        let closed = group.next().makePromise(of: Void.self)
        quiescing.initiateShutdown(promise: closed)
        await withTaskCancellationHandler {
            _ = try? await closed.futureResult.get()
        } onCancel: {
            connections.closeAll()
        }
    }
}

/// The listener's open connections, for closing them when a drain runs out of time.
private final class OpenConnections: Sendable {
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])

    func add(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        channels.withLock { $0[id] = channel }
        channel.closeFuture.whenComplete { [self] _ in _ = channels.withLock { $0.removeValue(forKey: id) } }
    }

    func closeAll() {
        for channel in channels.withLock({ Array($0.values) }) { channel.close(promise: nil) }
    }
}
