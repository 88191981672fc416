import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle
import SluiceCore

/// A partner listener (`listen.https` or `listen.http`) on SwiftNIO channel handlers
/// (`PartnerPipeline`). On graceful shutdown it stops accepting and asks every connection to
/// quiesce — HTTP/1.1 connections close when idle or after their response (which says
/// `Connection: close`), HTTP/2 ones send GOAWAY and close when their streams are done — and
/// returns once all are closed.
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
                channel.eventLoop.makeCompletedFuture { try PartnerPipeline.configure(channel, useTLS: useTLS, runtime: runtime) }
            }
            .bind(host: address.host, port: address.port)
            .get()
        onBound(name, server)
        try? await gracefulShutdown()
        let closed = group.next().makePromise(of: Void.self)
        quiescing.initiateShutdown(promise: closed)
        try await closed.futureResult.get()
    }
}
