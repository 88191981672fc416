import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real Redis Cluster on loopback for tests: three primaries and a replica of each, made with
/// `redis-cli --cluster create`, with a one-second `cluster-node-timeout` so a killed primary's
/// replica takes over within a few seconds. Ports are drawn from 20000–22767, so each node's
/// bus port (+10000) is below the ephemeral range and free too.
///
/// `ClusterSet.shared()` is one cluster for the tests that only read and write it (the store
/// contract suites); a test that kills a node or moves slots starts its own with `start()`.
public final class ClusterSet: @unchecked Sendable {
    /// The nodes, in the order they were given to `--cluster create` (the first three start as primaries).
    public let servers: [RedisServer]

    private init(servers: [RedisServer]) {
        self.servers = servers
    }

    /// `redis+cluster://` with every primary at start as a seed.
    public var url: String {
        "redis+cluster://" + servers.prefix(3).map { "127.0.0.1:\($0.port)" }.joined(separator: ",")
    }

    /// The one cluster the tests that do not disturb it share.
    public static func shared() async throws -> ClusterSet { try await spawnedShared.value }

    private static let spawnedShared = Task { () throws -> ClusterSet in
        let cluster = try await ClusterSet.start()
        sharedPIDs = cluster.servers.compactMap(\.pid)
        atexit { for pid in sharedPIDs { kill(pid, SIGKILL) } }
        return cluster
    }

    /// Starts six nodes, joins them as three primaries with a replica each, and waits until the
    /// cluster is `ok` on every node and every replica is in sync.
    public static func start() async throws -> ClusterSet {
        var servers: [RedisServer] = []
        for _ in 0..<6 {
            servers.append(
                try await RedisServer.start(
                    port: try clusterPort(), extraArguments: ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000", "--cluster-config-file", "nodes.conf"]
                )
            )
        }
        let cluster = ClusterSet(servers: servers)
        guard let cli = ChildProcess.which("redis-cli") else { throw RedisServerMissing() }
        let create = try ChildProcess(
            executable: cli, ["--cluster", "create"] + servers.map { "127.0.0.1:\($0.port)" } + ["--cluster-replicas", "1", "--cluster-yes"]
        )
        guard try await create.exitCode(timeout: .seconds(60)) == 0 else {
            throw ClusterFailed(message: "redis-cli --cluster create failed: \(create.standardOutput) \(create.standardError)")
        }
        try await cluster.waitUntilHealthy()
        return cluster
    }

    /// Waits until every running node says `cluster_state:ok` and every replica's link is up.
    public func waitUntilHealthy(timeout: Duration = .seconds(60)) async throws {
        try await eventually(timeout: timeout, "the Redis Cluster is ok on every node") {
            for server in self.servers where server.pid != nil {
                let info = await SentinelSet.cli(port: server.port, ["CLUSTER", "INFO"])
                guard info.contains("cluster_state:ok") else { return false }
                let replication = await SentinelSet.cli(port: server.port, ["INFO", "replication"])
                if replication.contains("role:slave"), !replication.contains("master_link_status:up") { return false }
            }
            return true
        }
    }

    /// The ports of the primaries now, each with its slot ranges (from `CLUSTER NODES` of a running node).
    public func primaries() async -> [(port: Int, slots: [ClosedRange<Int>])] {
        for server in servers where server.pid != nil {
            let nodes = await SentinelSet.cli(port: server.port, ["CLUSTER", "NODES"])
            let found: [(Int, [ClosedRange<Int>])] = nodes.split(separator: "\n").compactMap { line in
                let fields = line.split(separator: " ")
                guard fields.count >= 8, fields[2].contains("master"), !fields[2].contains("fail"),
                    let address = fields[1].split(separator: "@").first, let port = address.split(separator: ":").last.flatMap({ Int($0) })
                else { return nil }
                let slots = fields.dropFirst(8).compactMap { range -> ClosedRange<Int>? in
                    let bounds = range.split(separator: "-").compactMap { Int($0) }
                    return bounds.count == 2 ? bounds[0]...bounds[1] : bounds.count == 1 && !range.hasPrefix("[") ? bounds[0]...bounds[0] : nil
                }
                return (port, slots)
            }
            if !found.isEmpty { return found }
        }
        return []
    }

    /// The port of the primary serving `slot` now.
    public func primaryPort(ofSlot slot: Int) async -> Int? {
        await primaries().first { $0.slots.contains { $0.contains(slot) } }?.port
    }

    /// The node id of the node on `port`.
    public func nodeID(port: Int) async -> String {
        await SentinelSet.cli(port: port, ["CLUSTER", "MYID"]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The server on `port`.
    public func server(on port: Int) -> RedisServer? { servers.first { $0.port == port } }

    /// Runs `redis-cli` against a node and returns its raw output ("" when it fails).
    public func cli(_ port: Int, _ arguments: [String]) async -> String {
        await SentinelSet.cli(port: port, arguments)
    }

    /// A free port in 20000–22767 whose bus port (+10000) is free too.
    private static func clusterPort() throws -> Int {
        for _ in 0..<200 {
            let port = Int.random(in: 20_000..<22_767)
            if RedisServer.isFree(port: port), RedisServer.isFree(port: port + 10_000) { return port }
        }
        throw ClusterFailed(message: "no free port pair for a cluster node")
    }

    public struct ClusterFailed: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }
}

nonisolated(unsafe) private var sharedPIDs: [pid_t] = []
