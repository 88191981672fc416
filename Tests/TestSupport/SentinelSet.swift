import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real Redis Sentinel set on loopback for tests: a primary, a replica and three sentinels
/// (`redis-server --sentinel`) watching them as master `sluice`, with a one-second
/// `down-after-milliseconds` so that a failover takes a few seconds.
///
/// `SentinelSet.shared()` is one set for the tests that only use it (the store contract suites);
/// a test that kills or demotes the primary starts its own with `start()`.
public final class SentinelSet: @unchecked Sendable {
    public static let masterName = "sluice"

    /// The Redis servers, the first the primary at start, the others its replicas.
    public let servers: [RedisServer]
    public let sentinelPorts: [Int]
    private var sentinels: [ChildProcess]
    private let directory: URL
    private let executable: String

    private init(servers: [RedisServer], sentinelPorts: [Int], sentinels: [ChildProcess], directory: URL, executable: String) {
        self.servers = servers
        self.sentinelPorts = sentinelPorts
        self.sentinels = sentinels
        self.directory = directory
        self.executable = executable
    }

    /// Kills every sentinel (the Redis servers go on): nobody can say which is the primary.
    public func stopSentinels() async throws {
        for process in sentinels {
            process.signal(SIGKILL)
            _ = try await process.exitCode()
        }
        sentinels = []
    }

    /// Starts the sentinels again from their (rewritten) configurations and waits until they answer.
    public func restartSentinels() async throws {
        sentinels = try (0..<sentinelPorts.count).map { index in
            try ChildProcess(executable: executable, [directory.appendingPathComponent("sentinel-\(index).conf").path, "--sentinel"])
        }
        try await eventually("the sentinels answer again") { await primaryPort() != nil }
    }

    /// `redis+sentinel://…/sluice/DB`, with `credentials` (`user:pass@` or `:pass@`) and a query when given.
    public func url(database: Int = 0, credentials: String = "", query: String = "") -> String {
        "redis+sentinel://\(credentials)" + sentinelPorts.map { "127.0.0.1:\($0)" }.joined(separator: ",") + "/\(Self.masterName)/\(database)" + query
    }

    /// The one set the tests that do not disturb it share.
    public static func shared() async throws -> SentinelSet { try await spawnedShared.value }

    private static let spawnedShared = Task { () throws -> SentinelSet in
        let set = try await SentinelSet.start()
        sharedPIDs = set.sentinels.map(\.pid) + set.servers.compactMap(\.pid)
        atexit { for pid in sharedPIDs { kill(pid, SIGKILL) } }
        return set
    }

    /// Starts a primary, a replica of it and three sentinels, and waits until the sentinels
    /// know the replica and each other (so that a failover can happen).
    /// - Parameters:
    ///   - password: `requirepass` of both Redis servers (the sentinels are told it).
    ///   - sentinelPassword: `requirepass` of the sentinels.
    ///   - replicas: How many replicas (two: the promoted one still has a replica, as
    ///     `durability: replicated` needs after a failover).
    public static func start(password: String? = nil, sentinelPassword: String? = nil, replicas: Int = 1) async throws -> SentinelSet {
        let auth = password.map { ["--requirepass", $0, "--masterauth", $0] } ?? []
        let primary = try await RedisServer.start(port: try reservedPort(), extraArguments: auth)
        var servers = [primary]
        for _ in 0..<replicas {
            servers.append(try await RedisServer.start(port: try reservedPort(), extraArguments: auth + ["--replicaof", "127.0.0.1", String(primary.port)]))
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-sentinel-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var ports: [Int] = []
        var processes: [ChildProcess] = []
        guard let executable = ProcessInfo.processInfo.environment["SLUICE_TEST_REDIS_SERVER"] ?? ChildProcess.which("redis-server") else {
            throw RedisServerMissing()
        }
        for index in 0..<3 {
            let port = try reservedPort()
            var lines = [
                "port \(port)", "bind 127.0.0.1", "daemonize no", "loglevel warning", "dir \(directory.path)",
                "sentinel monitor \(masterName) 127.0.0.1 \(primary.port) 2",
                "sentinel down-after-milliseconds \(masterName) 1000",
                "sentinel failover-timeout \(masterName) 3000",
                "sentinel parallel-syncs \(masterName) 1",
            ]
            if let password { lines.append("sentinel auth-pass \(masterName) \(password)") }
            if let sentinelPassword { lines += ["requirepass \(sentinelPassword)", "sentinel sentinel-pass \(sentinelPassword)"] }
            let config = directory.appendingPathComponent("sentinel-\(index).conf")
            try (lines.joined(separator: "\n") + "\n").write(to: config, atomically: true, encoding: .utf8)
            processes.append(try ChildProcess(executable: executable, [config.path, "--sentinel"]))
            ports.append(port)
        }
        let set = SentinelSet(servers: servers, sentinelPorts: ports, sentinels: processes, directory: directory, executable: executable)
        try await eventually(timeout: .seconds(30), "the replicas are in sync with the primary") {
            for replica in servers.dropFirst() {
                let info = await cli(port: replica.port, ["INFO", "replication"], password: password)
                guard info.contains("master_link_status:up") else { return false }
            }
            return true
        }
        try await eventually(timeout: .seconds(30), "the sentinels know the replica and each other") {
            for port in ports {
                let sentinels = await set.sentinelCommand(port, ["SENTINEL", "sentinels", masterName], password: sentinelPassword)
                let known = await set.sentinelCommand(port, ["SENTINEL", "replicas", masterName], password: sentinelPassword)
                guard Self.entries(sentinels) == 2, Self.entries(known) == replicas, !known.contains("s_down") else { return false }
            }
            return true
        }
        return set
    }

    /// A free loopback port below the ephemeral range that `freePort` draws from: a killed
    /// primary's port is then not handed to another test's Redis while sentinels still watch
    /// it (they would make that Redis a replica of this set).
    private static func reservedPort() throws -> Int {
        for _ in 0..<100 {
            let port = Int.random(in: 20_000..<30_000)
            if RedisServer.isFree(port: port) { return port }
        }
        return try freePort()
    }

    /// The port of the Redis the sentinels name as primary now (nil when none answers).
    public func primaryPort(sentinelPassword: String? = nil) async -> Int? {
        for port in sentinelPorts {
            let lines = await sentinelCommand(port, ["SENTINEL", "get-master-addr-by-name", Self.masterName], password: sentinelPassword)
                .split(separator: "\n")
            if lines.count == 2, let found = Int(lines[1]) { return found }
        }
        return nil
    }

    /// The server whose port is `port`.
    public func server(on port: Int) -> RedisServer? { servers.first { $0.port == port } }

    /// Runs `redis-cli` against a sentinel and returns its raw output ("" when it fails).
    public func sentinelCommand(_ port: Int, _ arguments: [String], password: String? = nil) async -> String {
        await Self.cli(port: port, arguments, password: password)
    }

    /// Runs `redis-cli` against a loopback port and returns its raw output ("" when it fails).
    public static func cli(port: Int, _ arguments: [String], password: String? = nil) async -> String {
        guard let executable = ChildProcess.which("redis-cli") else { return "" }
        let auth = password.map { ["--no-auth-warning", "-a", $0] } ?? []
        guard let process = try? ChildProcess(executable: executable, ["-h", "127.0.0.1", "-p", String(port)] + auth + arguments),
            (try? await process.exitCode(timeout: .seconds(5))) != nil
        else { return "" }
        return process.standardOutput
    }

    /// How many entries a `SENTINEL sentinels|replicas` answer in redis-cli's plain output has
    /// (each starts with a `name` field).
    private static func entries(_ output: String) -> Int {
        output.split(separator: "\n").filter { $0 == "name" }.count
    }

    deinit {
        // The sentinels go first: they would otherwise reconfigure whatever takes a port next.
        for process in sentinels { process.signal(SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }
}

nonisolated(unsafe) private var sharedPIDs: [pid_t] = []
