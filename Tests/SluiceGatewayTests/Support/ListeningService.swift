import DemoUpstream
import Logging
import ServiceLifecycle

/// Runs the service `make` builds while `body` runs; `body` gets the port it listens on.
func withListeningService<T: Sendable>(
    _ make: (_ onListening: @escaping @Sendable (Int) -> Void) -> any Service,
    _ body: (Int) async throws -> T
) async throws -> T {
    let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
    let service = make { continuation.yield($0) }
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await service.run() }
        defer { group.cancelAll() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw CancellationError() }
        return try await body(port)
    }
}

/// Runs a demo upstream on a free loopback port while `body` runs.
func withDemoUpstream<T: Sendable>(_ body: (Int) async throws -> T) async throws -> T {
    var logger = Logger(label: "demo-upstream")
    logger.logLevel = .critical
    return try await withListeningService({ onListening in
        DemoUpstream(port: 0, logger: logger) { onListening($0) }
    }, body)
}
