public import Foundation
import Logging
public import NIOCore
import NIOSSL
public import SluiceCore
import Synchronization

/// The slot map of a Redis Cluster (SPEC §8): which primary serves each of the 16384 hash
/// slots, asked of the cluster with `CLUSTER SHARDS` (`CLUSTER SLOTS` on Redis < 7). Every
/// client of one store shares it. It is asked again when a reply says `MOVED`, when a
/// connection to a node is lost, and periodically (`watch`); each new map moves `generation`
/// on, and each event loop takes the new map on its next command, without a lock.
public final class RedisCluster: Sendable {
    /// One reading of the slot map; never changed once made.
    public final class SlotMap: Sendable {
        /// The primaries, in the order the cluster listed them.
        public let primaries: [RedisURL.Endpoint]
        /// Replicas of those primaries that have not failed.
        public let replicas: Int
        /// For each slot, the index of its primary in `primaries`; `uncovered` when none serves it.
        let owners: [UInt16]
        /// Slots a primary serves.
        public let coveredSlots: Int

        static let uncovered = UInt16.max

        init(primaries: [RedisURL.Endpoint], replicas: Int, owners: [UInt16]) {
            self.primaries = primaries
            self.replicas = replicas
            self.owners = owners
            coveredSlots = owners.reduce(0) { $0 + ($1 == Self.uncovered ? 0 : 1) }
        }

        /// Whether a primary serves every slot.
        public var coversEverySlot: Bool { coveredSlots == HashSlot.count }

        /// The primary of `slot`, nil when the slot is not covered.
        func primary(of slot: Int) -> Int? {
            let owner = owners[slot]
            return owner == Self.uncovered ? nil : Int(owner)
        }

        /// Whether both say the same primary serves each slot.
        func sameAssignment(as other: SlotMap) -> Bool {
            primaries == other.primaries && owners == other.owners
        }
    }

    /// Why the slot map was read again and found changed (`sluice_store_topology_changes_total{reason}`).
    public enum ChangeReason: String, Sendable {
        /// A node answered `MOVED`: a slot has another primary.
        case moved
        /// A node was lost (connection refused or closed) or a periodic refresh saw a change.
        case refreshed
    }

    private struct State {
        var map: SlotMap?
        /// The refresh under way; others wait for it instead of asking again.
        var refreshing: EventLoopFuture<SlotMap>?
        var lastRefresh: NIODeadline?
        var lastChange: Date?
    }

    let url: RedisURL
    private let tls: NIOSSLContext?
    private let state = Mutex(State())
    private let generationCounter = Atomic<Int>(0)
    private let logger: Logger
    private let onChange: @Sendable (ChangeReason) -> Void
    private let onRedirect: @Sendable (String) -> Void

    /// - Parameters:
    ///   - onChange: Called once for every change of the slot map after the first reading.
    ///   - onRedirect: Called with `moved` or `ask` for every redirect a node answers.
    init(
        url: RedisURL, tls: NIOSSLContext?, logger: Logger, onChange: @escaping @Sendable (ChangeReason) -> Void,
        onRedirect: @escaping @Sendable (String) -> Void
    ) {
        self.url = url
        self.tls = tls
        self.logger = logger
        self.onChange = onChange
        self.onRedirect = onRedirect
    }

    /// Moves on whenever the slot map changes.
    var generation: Int { generationCounter.load(ordering: .relaxed) }

    /// The slot map now (nil until it was first read), and when it last changed.
    public var current: (map: SlotMap?, lastChange: Date?) {
        state.withLock { ($0.map, $0.lastChange) }
    }

    /// A node answered a redirect of `kind` (`moved`, `ask`).
    func redirected(_ kind: String) {
        onRedirect(kind)
    }

    /// The slot map, read first when there is none yet.
    func map(on eventLoop: any EventLoop, timeout: Duration) -> EventLoopFuture<SlotMap> {
        if let map = state.withLock({ $0.map }) { return eventLoop.makeSucceededFuture(map) }
        return refresh(on: eventLoop, timeout: timeout, reason: .refreshed)
    }

    /// Reads the slot map again (one reading at a time: callers meanwhile share it; at most
    /// one every 50 ms, so a burst of `MOVED` replies costs one reading).
    @discardableResult
    func refresh(on eventLoop: any EventLoop, timeout: Duration, reason: ChangeReason) -> EventLoopFuture<SlotMap> {
        let now = NIODeadline.now()
        let started: (EventLoopFuture<SlotMap>, EventLoopPromise<SlotMap>?) = state.withLock { state in
            if let refreshing = state.refreshing { return (refreshing, nil) }
            if let map = state.map, let last = state.lastRefresh, now - last < .milliseconds(50) {
                return (eventLoop.makeSucceededFuture(map), nil)
            }
            let promise = eventLoop.makePromise(of: SlotMap.self)
            state.refreshing = promise.futureResult
            state.lastRefresh = now
            return (promise.futureResult, promise)
        }
        guard let promise = started.1 else { return started.0.hop(to: eventLoop) }
        let candidates = state.withLock { $0.map?.primaries ?? [] }
        read(from: candidates + seedsNotIn(candidates), on: eventLoop, timeout: timeout).whenComplete { result in
            switch result {
            case .success(let map):
                self.adopt(map, reason: reason)
                promise.succeed(map)
            case .failure(let error):
                self.state.withLock { $0.refreshing = nil }
                self.logger.warning("cannot read the Redis Cluster slot map", metadata: ["error": .string("\(error)")])
                promise.fail(error)
            }
        }
        return promise.futureResult
    }

    /// A connection to `node` was lost or could not be opened: the map may be out of date.
    func connectionLost(to node: RedisURL.Endpoint, on eventLoop: any EventLoop, timeout: Duration) {
        refresh(on: eventLoop, timeout: timeout, reason: .refreshed).whenFailure { _ in }
    }

    private func seedsNotIn(_ known: [RedisURL.Endpoint]) -> [RedisURL.Endpoint] {
        guard case .cluster(let seeds) = url.topology else { return [] }
        return seeds.filter { !known.contains($0) }
    }

    private func adopt(_ map: SlotMap, reason: ChangeReason) {
        let old: SlotMap? = state.withLock { state in
            defer {
                state.refreshing = nil
                state.map = map
            }
            if let old = state.map, !old.sameAssignment(as: map) { state.lastChange = Date() }
            return state.map
        }
        if let old, old.sameAssignment(as: map) { return }
        generationCounter.add(1, ordering: .relaxed)
        if map.coveredSlots < HashSlot.count {
            logger.warning(
                "the Redis Cluster does not cover every slot: commands for the others fail until it does",
                metadata: ["covered": .stringConvertible(map.coveredSlots), "primaries": .stringConvertible(map.primaries.count)]
            )
        }
        guard let old else {
            logger.info(
                "read the Redis Cluster slot map",
                metadata: ["primaries": .string(map.primaries.map(\.description).joined(separator: ",")), "replicas": .stringConvertible(map.replicas)]
            )
            return
        }
        logger.warning(
            "the Redis Cluster slot map changed",
            metadata: [
                "reason": .string(reason.rawValue), "old": .string(old.primaries.map(\.description).joined(separator: ",")),
                "new": .string(map.primaries.map(\.description).joined(separator: ",")), "covered": .stringConvertible(map.coveredSlots),
            ]
        )
        onChange(reason)
    }

    /// Asks `nodes` in turn for the slot map.
    private func read(from nodes: [RedisURL.Endpoint], on eventLoop: any EventLoop, timeout: Duration) -> EventLoopFuture<SlotMap> {
        @Sendable func ask(_ index: Int, _ reasons: [String]) -> EventLoopFuture<SlotMap> {
            guard index < nodes.count else {
                return eventLoop.makeFailedFuture(RedisError.unavailable("no Redis Cluster node answered: " + reasons.joined(separator: "; ")))
            }
            let node = nodes[index]
            return command(["CLUSTER", "SHARDS"], at: node, on: eventLoop, timeout: timeout)
                .flatMapThrowing { try Self.slotMap(shards: $0, tls: self.url.useTLS) }
                .flatMapError { error in
                    // Redis before 7 has no CLUSTER SHARDS.
                    guard case RedisError.server(let message) = error, message.lowercased().contains("unknown subcommand") else {
                        return eventLoop.makeFailedFuture(error)
                    }
                    return self.command(["CLUSTER", "SLOTS"], at: node, on: eventLoop, timeout: timeout).flatMapThrowing { try Self.slotMap(slots: $0) }
                }
                .flatMapError { error in ask(index + 1, reasons + ["\(node): \(error)"]) }
        }
        return ask(0, [])
    }

    private func command(_ arguments: [String], at node: RedisURL.Endpoint, on eventLoop: any EventLoop, timeout: Duration) -> EventLoopFuture<RedisReply> {
        RedisConnection.oneShot(arguments, at: node, tls: tls, auth: url.authCommand, timeout: timeout, on: eventLoop)
    }

    /// Re-reads the slot map every `interval` until cancelled (changes are logged and counted).
    public func watch(on eventLoop: any EventLoop, every interval: Duration, timeout: Duration) async {
        while !Task.isCancelled {
            _ = try? await refresh(on: eventLoop, timeout: timeout, reason: .refreshed).get()
            try? await Task.sleep(for: interval)
        }
    }

    // MARK: - Parsing

    /// The map from a `CLUSTER SHARDS` reply: per shard a flat map with `slots` (start/end
    /// pairs) and `nodes` (flat maps with `ip`, `endpoint`, `port`, `tls-port`, `role`, `health`).
    static func slotMap(shards reply: RedisReply, tls: Bool) throws -> SlotMap {
        guard case .array(let shards) = reply else { throw RedisError.protocolViolation("unexpected CLUSTER SHARDS reply") }
        var primaries: [RedisURL.Endpoint] = []
        var replicas = 0
        var owners = [UInt16](repeating: SlotMap.uncovered, count: HashSlot.count)
        for shard in shards {
            let fields = try flatMap(shard)
            guard case .array(let slots)? = fields["slots"], case .array(let nodes)? = fields["nodes"] else {
                throw RedisError.protocolViolation("a CLUSTER SHARDS entry without slots or nodes")
            }
            var primary: RedisURL.Endpoint?
            for node in nodes {
                let node = try flatMap(node)
                guard text(node["role"]) == "master" else {
                    // A replica in sync can say `loading` on Redis 7.0 until writes reach it.
                    if text(node["health"]) != "failed" { replicas += 1 }
                    continue
                }
                guard text(node["health"]) == "online" else { continue }
                let endpoint = text(node["endpoint"]).flatMap { $0.isEmpty || $0 == "?" ? nil : $0 } ?? text(node["ip"])
                guard let host = endpoint, let port = integer(node[tls ? "tls-port" : "port"]) else { continue }
                primary = RedisURL.Endpoint(host: host, port: port)
            }
            guard let primary, !slots.isEmpty else { continue }
            let index = primaries.firstIndex(of: primary) ?? {
                primaries.append(primary)
                return primaries.count - 1
            }()
            for pair in stride(from: 0, to: slots.count - 1, by: 2) {
                guard let start = integer(slots[pair]), let end = integer(slots[pair + 1]), 0 <= start, start <= end, end < HashSlot.count else {
                    throw RedisError.protocolViolation("a malformed slot range in CLUSTER SHARDS")
                }
                for slot in start...end { owners[slot] = UInt16(index) }
            }
        }
        return SlotMap(primaries: primaries, replicas: replicas, owners: owners)
    }

    /// The map from a `CLUSTER SLOTS` reply: `[start, end, [ip, port, id…], replicas…]` per range.
    static func slotMap(slots reply: RedisReply) throws -> SlotMap {
        guard case .array(let ranges) = reply else { throw RedisError.protocolViolation("unexpected CLUSTER SLOTS reply") }
        var primaries: [RedisURL.Endpoint] = []
        var replicas = Set<String>()
        var owners = [UInt16](repeating: SlotMap.uncovered, count: HashSlot.count)
        for range in ranges {
            guard case .array(let parts) = range, parts.count >= 3, let start = integer(parts[0]), let end = integer(parts[1]),
                0 <= start, start <= end, end < HashSlot.count, case .array(let node) = parts[2], node.count >= 2,
                let host = text(node[0]), let port = integer(node[1])
            else { throw RedisError.protocolViolation("a malformed CLUSTER SLOTS entry") }
            let primary = RedisURL.Endpoint(host: host, port: port)
            let index = primaries.firstIndex(of: primary) ?? {
                primaries.append(primary)
                return primaries.count - 1
            }()
            for slot in start...end { owners[slot] = UInt16(index) }
            for case .array(let replica) in parts.dropFirst(3) where replica.count >= 2 {
                replicas.insert("\(text(replica[0]) ?? ""):\(integer(replica[1]) ?? 0)")
            }
        }
        return SlotMap(primaries: primaries, replicas: replicas.count, owners: owners)
    }

    private static func flatMap(_ reply: RedisReply) throws -> [String: RedisReply] {
        guard case .array(let items) = reply, items.count % 2 == 0 else { throw RedisError.protocolViolation("expected a flat map in a cluster reply") }
        var fields: [String: RedisReply] = [:]
        for pair in stride(from: 0, to: items.count, by: 2) {
            if let key = text(items[pair]) { fields[key] = items[pair + 1] }
        }
        return fields
    }

    private static func text(_ reply: RedisReply?) -> String? {
        switch reply {
        case .string(let bytes): String(decoding: bytes, as: UTF8.self)
        case .status(let text): text
        default: nil
        }
    }

    private static func integer(_ reply: RedisReply?) -> Int? {
        switch reply {
        case .integer(let number): Int(number)
        case .string(let bytes): Int(String(decoding: bytes, as: UTF8.self))
        default: nil
        }
    }
}

/// A `MOVED`, `ASK`, `TRYAGAIN` or `CLUSTERDOWN` error reply of a cluster node.
enum ClusterRedirect: Equatable {
    /// The slot has another primary now: follow it and read the map again.
    case moved(slot: Int, to: RedisURL.Endpoint)
    /// The slot is being moved and this key already went: ask `to` once (after `ASKING`).
    case ask(slot: Int, to: RedisURL.Endpoint)
    /// Try again shortly (a multi-key command during a migration, a cluster without a quorum).
    case tryAgain

    /// The redirect in `message`; an endpoint without a host (`:7001`) is on `current`'s host.
    init?(_ message: String, current: RedisURL.Endpoint) {
        if message.hasPrefix("TRYAGAIN") || message.hasPrefix("CLUSTERDOWN") {
            self = .tryAgain
            return
        }
        let parts = message.split(separator: " ")
        guard parts.count == 3, parts[0] == "MOVED" || parts[0] == "ASK", let slot = Int(parts[1]), let colon = parts[2].lastIndex(of: ":"),
            let port = Int(parts[2][parts[2].index(after: colon)...])
        else { return nil }
        let host = parts[2][..<colon]
        let endpoint = RedisURL.Endpoint(host: host.isEmpty ? current.host : String(host), port: port)
        self = parts[0] == "MOVED" ? .moved(slot: slot, to: endpoint) : .ask(slot: slot, to: endpoint)
    }
}
