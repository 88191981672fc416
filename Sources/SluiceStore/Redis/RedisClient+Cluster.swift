import NIOCore
public import SluiceCore

/// How a `redis+cluster://` client decides which connection a command goes to: the primary
/// of the slot of its first key (the scripts keep all their keys in one hash tag), from the
/// event loop's copy of the slot map. Redirects:
/// - `MOVED`: the slot map is read again and the command goes to the named primary;
/// - `ASK`: `ASKING` and the command go to the named node once, the map stays;
/// - `TRYAGAIN`/`CLUSTERDOWN`: tried again after 5, 10, 20… ms while the call's deadline allows.
/// A redirect means the command was not run, so following it never runs a write twice.
extension RedisClient {
    /// The slot of a command's key; nil for commands without one (they go to any primary).
    static func slot(of arguments: [String]) -> Int? {
        guard arguments.count > 1 else { return nil }
        switch arguments[0] {
        case "EVALSHA", "EVAL": return arguments.count > 3 && arguments[2] != "0" ? HashSlot.of(arguments[3]) : nil
        case "SCRIPT", "PING", "INFO", "WAIT", "CLUSTER", "SCAN", "ASKING", "ROLE", "AUTH", "SELECT", "DBSIZE": return nil
        default: return HashSlot.of(arguments[1])
        }
    }

    /// Sends `command` to the primary of `slot` (or to `node`), with `follower` right behind
    /// it on the same connection; the futures complete on `eventLoop`.
    func clusterExchange(
        _ command: [String], slot: Int?, then follower: [String]? = nil, at node: RedisURL.Endpoint? = nil, on eventLoop: any EventLoop,
        longer: Duration = .zero
    ) -> EventLoopFuture<(reply: RedisReply, then: RedisReply?)> {
        guard let cluster = primary.cluster, let loop = clusterLoops?[eventLoop] else {
            let fallback = defaultEventLoop
            guard fallback !== eventLoop else { return eventLoop.makeFailedFuture(RedisError.unavailable("not a cluster client")) }
            return fallback.flatSubmit { self.clusterExchange(command, slot: slot, then: follower, at: node, on: fallback, longer: longer) }.hop(to: eventLoop)
        }
        guard eventLoop.inEventLoop else {
            return eventLoop.flatSubmit { self.clusterExchange(command, slot: slot, then: follower, at: node, on: eventLoop, longer: longer) }
        }
        guard !isShutDown.load(ordering: .relaxed) else { return eventLoop.makeFailedFuture(RedisError.unavailable("client shut down")) }
        let deadline = NIODeadline.now() + TimeAmount(timeout + longer)
        return clusterSend(command, slot: slot, then: follower, node: node, followRedirects: node == nil, cluster: cluster, loop: loop, deadline: deadline)
    }

    /// One try of a command (see the type's comment for redirects). On `loop`'s event loop.
    func clusterSend(
        _ command: [String], slot: Int?, then follower: [String]? = nil, node: RedisURL.Endpoint? = nil, asking: Bool = false,
        followRedirects: Bool = true, cluster: RedisCluster, loop: ClusterLoop, deadline: NIODeadline, tries: Int = 0
    ) -> EventLoopFuture<(reply: RedisReply, then: RedisReply?)> {
        let eventLoop = loop.eventLoop
        let setupTimeout = setupTimeout
        if loop.generation != cluster.generation, let map = cluster.current.map { loop.adopt(map, generation: cluster.generation) }
        let endpoint: RedisURL.Endpoint
        let local: LoopConnection
        if let node {
            endpoint = node
            local = loop.connection(to: node)
        } else if let map = loop.map, !map.primaries.isEmpty {
            guard let index = slot.map({ map.primary(of: $0) }) ?? 0 else {
                cluster.refresh(on: eventLoop, timeout: setupTimeout, reason: .refreshed).whenFailure { _ in }
                return eventLoop.makeFailedFuture(RedisError.unavailable("no Redis Cluster primary serves slot \(slot ?? -1)"))
            }
            endpoint = map.primaries[index]
            local = loop.byPrimary[index]
        } else {
            // No map yet (or an empty one): read it, then try.
            return cluster.refresh(on: eventLoop, timeout: setupTimeout, reason: .refreshed).flatMap { map in
                guard !map.primaries.isEmpty, NIODeadline.now() < deadline else {
                    return eventLoop.makeFailedFuture(RedisError.unavailable("the Redis Cluster has no primary serving slots"))
                }
                loop.adopt(map, generation: cluster.generation)
                return self.clusterSend(
                    command, slot: slot, then: follower, followRedirects: followRedirects, cluster: cluster, loop: loop, deadline: deadline, tries: tries + 1
                )
            }
        }
        let lost: @Sendable () -> Void = { cluster.connectionLost(to: endpoint, on: eventLoop, timeout: setupTimeout) }
        let onCommand = onCommand
        return connection(local, generation: 0, before: deadline, failed: lost) { eventLoop in self.open(endpoint, on: eventLoop) }
            .flatMap { connection -> EventLoopFuture<(reply: RedisReply, then: RedisReply?)> in
                if asking {
                    onCommand?()
                    connection.send(["ASKING"], deadline: deadline).whenFailure { _ in }
                }
                onCommand?()
                let reply = connection.send(command, deadline: deadline)
                guard let follower else { return reply.map { ($0, nil) } }
                onCommand?()
                return reply.and(connection.send(follower, deadline: deadline)).map { ($0, $1) }
            }
            .flatMapError { error in
                self.clusterRetry(
                    after: error, at: endpoint, command, slot: slot, then: follower, followRedirects: followRedirects, cluster: cluster, loop: loop,
                    deadline: deadline, tries: tries
                )
            }
    }

    /// One command without a follower, by its slot: on the loop's open connection to the slot's
    /// primary it goes out at once, with no future in between (as on one Redis); anything else
    /// (no map yet, no connection, a newer map to take) goes the way of `clusterSend`.
    func clusterSendOne(_ command: [String], slot: Int?, cluster: RedisCluster, loop: ClusterLoop, deadline: NIODeadline) -> EventLoopFuture<RedisReply> {
        guard loop.generation == cluster.generation, let map = loop.map, let slot, let index = map.primary(of: slot),
            case .ready(let connection, _) = loop.byPrimary[index].state, connection.isActive
        else {
            return clusterSend(command, slot: slot, then: nil, cluster: cluster, loop: loop, deadline: deadline).map(\.reply)
        }
        onCommand?()
        let endpoint = map.primaries[index]
        return connection.send(command, deadline: deadline).flatMapError { error in
            self.clusterRetry(after: error, at: endpoint, command, slot: slot, cluster: cluster, loop: loop, deadline: deadline, tries: 0).map(\.reply)
        }
    }

    /// What follows a failed try at `endpoint`: a lost connection is reported (the map is read
    /// again); `MOVED`, `ASK`, `TRYAGAIN` and `CLUSTERDOWN` are followed (see the type's
    /// comment) while `tries` and the deadline allow; any other error is the answer.
    private func clusterRetry(
        after error: any Error, at endpoint: RedisURL.Endpoint, _ command: [String], slot: Int?, then follower: [String]? = nil,
        followRedirects: Bool = true, cluster: RedisCluster, loop: ClusterLoop, deadline: NIODeadline, tries: Int
    ) -> EventLoopFuture<(reply: RedisReply, then: RedisReply?)> {
        let eventLoop = loop.eventLoop
        let setupTimeout = setupTimeout
        guard case RedisError.server(let message) = error else {
            if case RedisError.connectionLost = error { cluster.connectionLost(to: endpoint, on: eventLoop, timeout: setupTimeout) }
            return eventLoop.makeFailedFuture(error)
        }
        guard followRedirects, tries < 5, let redirect = ClusterRedirect(message, current: endpoint) else { return eventLoop.makeFailedFuture(error) }
        switch redirect {
        case .moved(_, let target):
            cluster.redirected("moved")
            cluster.refresh(on: eventLoop, timeout: setupTimeout, reason: .moved).whenFailure { _ in }
            return clusterSend(command, slot: slot, then: follower, node: target, cluster: cluster, loop: loop, deadline: deadline, tries: tries + 1)
        case .ask(_, let target):
            cluster.redirected("ask")
            return clusterSend(
                command, slot: slot, then: follower, node: target, asking: true, cluster: cluster, loop: loop, deadline: deadline, tries: tries + 1
            )
        case .tryAgain:
            // The cluster may have lost a primary or slots: read the map again (debounced).
            if tries == 0 { cluster.refresh(on: eventLoop, timeout: setupTimeout, reason: .refreshed).whenFailure { _ in } }
            let delay = TimeAmount.milliseconds(Int64(5 << tries))
            guard NIODeadline.now() + delay < deadline else { return eventLoop.makeFailedFuture(error) }
            return eventLoop.flatScheduleTask(in: delay) {
                self.clusterSend(command, slot: slot, then: follower, cluster: cluster, loop: loop, deadline: deadline, tries: tries + 1)
            }.futureResult
        }
    }

    /// The nodes that together hold every key: each primary of a cluster, or nil for the one
    /// Redis (or the Sentinel-found primary). For commands such as `SCAN` that see one node's keys.
    public func keyHolders() async throws -> [RedisURL.Endpoint?] {
        guard let cluster = primary.cluster else { return [nil] }
        return try await cluster.map(on: defaultEventLoop, timeout: setupTimeout).get().primaries
    }

    /// The positions of `keys` grouped by the primary that serves them in the current slot map,
    /// groups and positions in the order first seen. A key whose slot no primary serves, and
    /// every key before a map was read, makes a group of its own.
    func groupedByPrimary(_ keys: [String]) -> [[Int]] {
        guard let map = primary.cluster?.current.map else { return keys.indices.map { [$0] } }
        var groupOfPrimary: [Int: Int] = [:]
        var groups: [[Int]] = []
        for (position, key) in keys.enumerated() {
            guard let owner = map.primary(of: HashSlot.of(key)) else {
                groups.append([position])
                continue
            }
            if let group = groupOfPrimary[owner] {
                groups[group].append(position)
            } else {
                groupOfPrimary[owner] = groups.count
                groups.append([position])
            }
        }
        return groups
    }

    /// Sends a command to `node` (one of `keyHolders()`), following no redirect.
    public func send(_ arguments: [String], at node: RedisURL.Endpoint?) async throws -> RedisReply {
        guard let node else { return try await send(arguments) }
        return try await clusterExchange(arguments, slot: nil, at: node, on: defaultEventLoop).get().reply
    }

    /// Reads the slot map and opens a connection to each primary on each loop.
    func connectToPrimaries() async {
        guard let primaries = try? await keyHolders() else { return }
        await withTaskGroup(of: Void.self) { group in
            for eventLoop in eventLoops {
                for node in primaries {
                    group.addTask { _ = try? await self.clusterExchange(["PING"], slot: nil, at: node, on: eventLoop).get() }
                }
            }
        }
    }

    /// Closes every cluster connection (at shutdown).
    func closeClusterConnections() async {
        guard let clusterLoops else { return }
        for eventLoop in eventLoops {
            guard let loop = clusterLoops[eventLoop] else { continue }
            let connections = try? await eventLoop.submit { loop.takeConnections() }.get()
            for connection in connections ?? [] { await connection.close() }
        }
    }
}

/// One event loop's connections to the nodes of a cluster and its copy of the slot map; only
/// touched on that loop.
final class ClusterLoop: @unchecked Sendable {
    let eventLoop: any EventLoop
    /// The `RedisCluster.generation` of `map`.
    private(set) var generation = -1
    private(set) var map: RedisCluster.SlotMap?
    /// The connection to each node, kept across maps while the node is a primary.
    private var nodes: [RedisURL.Endpoint: LoopConnection] = [:]
    /// `nodes` in the order of `map.primaries`.
    private(set) var byPrimary: [LoopConnection] = []

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Takes a new slot map; connections to nodes that are no longer primaries close a little
    /// later (commands already sent on them may still be answered).
    func adopt(_ map: RedisCluster.SlotMap, generation: Int) {
        self.map = map
        self.generation = generation
        byPrimary = map.primaries.map(connection(to:))
        for (node, local) in nodes where !map.primaries.contains(node) {
            nodes[node] = nil
            guard case .ready(let connection, _) = local.state else { continue }
            eventLoop.scheduleTask(in: .seconds(10)) { connection.channel.close(promise: nil) }
        }
    }

    /// The loop's connection to `node` (made when there is none yet).
    func connection(to node: RedisURL.Endpoint) -> LoopConnection {
        if let local = nodes[node] { return local }
        let local = LoopConnection(eventLoop: eventLoop)
        nodes[node] = local
        return local
    }

    /// Every open connection, forgotten here (to close them at shutdown).
    func takeConnections() -> [RedisConnection] {
        defer {
            nodes = [:]
            byPrimary = []
        }
        return nodes.values.compactMap { local in
            if case .ready(let connection, _) = local.state { return connection }
            return nil
        }
    }
}
