public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real `redis-server` for tests.
///
/// `RedisServer.shared` is the one the test command (`scripts/test`) starts and names in
/// `SLUICE_TEST_REDIS_URL`; without it, one is spawned for this test process. Tests that stop
/// and restart Redis spawn their own with `start()`. A missing `redis-server` fails the test:
/// nothing is skipped.
public final class RedisServer: @unchecked Sendable {
    public let port: Int
    public let tlsPort: Int?
    private let arguments: [String]
    private var process: ChildProcess?

    public var url: String { "redis://127.0.0.1:\(port)/0" }
    /// The running process's id (nil while stopped).
    public var pid: pid_t? { process?.pid }

    private init(port: Int, tlsPort: Int?, arguments: [String]) {
        self.port = port
        self.tlsPort = tlsPort
        self.arguments = arguments
    }

    /// The URL of the shared test Redis.
    public static func sharedURL() async throws -> String {
        if let url = ProcessInfo.processInfo.environment["SLUICE_TEST_REDIS_URL"], !url.isEmpty { return url }
        return try await spawnedShared.value.url
    }

    private static let spawnedShared = Task { () throws -> RedisServer in
        let server = try await RedisServer.start()
        sharedPID = server.process?.pid ?? 0
        atexit { if sharedPID > 0 { kill(sharedPID, SIGKILL) } }
        return server
    }

    /// Starts a new redis-server on a free loopback port (and a TLS port with `tls`), with
    /// optional `extraArguments` such as `--requirepass`.
    /// - Parameter port: The port (default: a free one from the ephemeral range).
    public static func start(tls: (certificate: String, key: String)? = nil, port: Int? = nil, extraArguments: [String] = []) async throws -> RedisServer {
        // A directory of its own: a replica writes the primary's snapshot there (a Redis
        // started in a directory with a dump.rdb would load another test's keys).
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var arguments = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning", "--dir", directory.path]
        var tlsPort: Int?
        let port = try port ?? freePort()
        arguments += ["--port", String(port)]
        if let tls {
            let chosen = try freePort()
            tlsPort = chosen
            arguments += ["--tls-port", String(chosen), "--tls-cert-file", tls.certificate, "--tls-key-file", tls.key, "--tls-auth-clients", "no"]
        }
        let server = RedisServer(port: port, tlsPort: tlsPort, arguments: arguments + extraArguments)
        try await server.restart()
        return server
    }

    /// Starts (again) on the same ports and waits until it accepts connections.
    public func restart() async throws {
        guard let executable = ProcessInfo.processInfo.environment["SLUICE_TEST_REDIS_SERVER"] ?? ChildProcess.which("redis-server") else {
            throw RedisServerMissing()
        }
        process = try ChildProcess(executable: executable, arguments)
        try await eventually(timeout: .seconds(10), "redis-server on port \(port) accepts connections") { Self.accepts(port: port) }
    }

    /// Stops the server (SIGKILL: like a crash) and waits until the port is closed.
    public func stop() async throws {
        guard let process else { return }
        process.signal(SIGKILL)
        _ = try await process.exitCode()
        self.process = nil
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered, as with a hung host.
    public func pause() {
        process?.signal(SIGSTOP)
    }

    /// Lets a paused server run again (SIGCONT).
    public func resume() {
        process?.signal(SIGCONT)
    }

    deinit {
        process?.signal(SIGCONT)
        process?.signal(SIGKILL)
    }

    /// Whether a loopback listener could take `port` now.
    static func isFree(port: Int) -> Bool {
        onLoopback(port: port) { socket, address, length in bind(socket, address, length) } == 0
    }

    private static func accepts(port: Int) -> Bool {
        onLoopback(port: port) { socket, address, length in connect(socket, address, length) } == 0
    }

    /// Calls `body` with a new TCP socket and the address 127.0.0.1:`port`, then closes the socket.
    private static func onLoopback(port: Int, _ body: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}

nonisolated(unsafe) private var sharedPID: pid_t = 0

public struct RedisServerMissing: Error, CustomStringConvertible {
    public var description: String { "redis-server is not installed: run ./scripts/test, which installs and starts it" }
}
