import NIOCore
import NIOPosix

/// Runs Swift concurrency's global executor on NIO's event loops (`MultiThreadedEventLoopGroup.singleton`)
/// for the long-running commands, so that request handling, upstream calls and channel I/O stay on
/// one thread instead of hopping between the event loops and the cooperative pool on every
/// await (a wake-up and a context switch each; measured with `loadtest/run`). Called once, at the
/// start of `serve` or `demo-upstream`, before any task is created.
enum EventLoopConcurrency {
    static func install() {
        _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
    }
}
