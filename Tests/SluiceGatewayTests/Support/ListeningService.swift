import DemoUpstream
import Logging
import ServiceLifecycle

/// Runs the service `make` builds while `body` runs; `body` gets the port it listens on. The
/// service is stopped by a graceful shutdown (cancelled only if that takes over 5 s): cancelling
/// a NIO async server while it still holds accepted connections traps in NIO
/// ("Deinited NIOAsyncWriter without calling finish()", apple/swift-nio#2637), which a gateway
/// that opens upstream connections up to the last moment can trigger.
func withListeningService<T: Sendable>(
    _ make: (_ onListening: @escaping @Sendable (Int) -> Void) -> any Service,
    _ body: (Int) async throws -> T
) async throws -> T {
    let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
    let service = make { continuation.yield($0) }
    var configuration = ServiceGroupConfiguration(services: [service], logger: Logger(label: "test-service") { _ in SwiftLogNoOpLogHandler() })
    configuration.maximumGracefulShutdownDuration = .seconds(5)
    let services = ServiceGroup(configuration: configuration)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await services.run() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw CancellationError() }
        let result: Result<T, any Error>
        do {
            result = .success(try await body(port))
        } catch {
            result = .failure(error)
        }
        await services.triggerGracefulShutdown()
        try await group.waitForAll()
        return try result.get()
    }
}

/// Runs a demo upstream on `host` (default 127.0.0.1) and `port` (default: a free one) while `body` runs.
func withDemoUpstream<T: Sendable>(host: String = "127.0.0.1", port: Int = 0, _ body: (Int) async throws -> T) async throws -> T {
    var logger = Logger(label: "demo-upstream")
    logger.logLevel = .critical
    return try await withListeningService({ onListening in
        DemoUpstream(host: host, port: port, logger: logger) { onListening($0) }
    }, body)
}
