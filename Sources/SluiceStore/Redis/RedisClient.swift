import Crypto
import Logging
public import NIOCore
import NIOPosix
import NIOSSL
public import SluiceCore
import Synchronization

/// A Lua script called by `EVALSHA`; loaded with `SCRIPT LOAD` when Redis does not know it.
struct RedisScript: Sendable {
    let source: String
    let sha1: String

    init(_ source: String) {
        self.source = source
        sha1 = Insecure.SHA1.hash(data: Array(source.utf8)).map { String($0, radix: 16).leftPadded(2) }.joined()
    }
}

/// Pipelined Redis connections, one per event loop: a caller on an event loop of the client's
/// group uses that loop's connection, so a command and its reply never cross threads and take
/// no lock (callers elsewhere hop to the client's first loop).
///
/// - Every call has a deadline (`timeout`, default 50 ms): a dead Redis never stalls a caller.
/// - A connection that fails is reopened on demand with exponential backoff; while backing off,
///   calls fail at once instead of waiting for a connect timeout. A change of primary ends the
///   backoff (the failures were the old one's).
/// - `redis://` and `rediss://` (TLS via swift-nio-ssl); `AUTH` and `SELECT` on connect, and
///   the client's scripts are loaded on every new connection.
/// - `redis+sentinel://`: connections go to the primary `RedisPrimary` names (confirmed with
///   `ROLE`); when it changes, connections of the old one are replaced on their next use.
/// - `redis+cluster://`: each loop has a connection per primary, and a command goes to the
///   primary of its key's slot (`RedisCluster`), following `MOVED` and `ASK` (see `RedisClient+Cluster`).
public final class RedisClient: Sendable {
    private let url: RedisURL
    /// Where connections go; shared by every client of one store.
    public let primary: RedisPrimary
    /// Loaded on every new connection, so the first `EVALSHA` finds them.
    private let scripts: [RedisScript]
    private let tls: NIOSSLContext?
    let timeout: Duration
    /// The connection of each event loop.
    private let locals: LoopLocal<LoopConnection>
    /// On a cluster: each event loop's connections to the primaries and its copy of the slot map.
    let clusterLoops: LoopLocal<ClusterLoop>?
    /// Where callers from outside the group are served.
    let defaultEventLoop: any EventLoop
    /// The loops of the client's group, each with a connection of its own.
    let eventLoops: [any EventLoop]
    let isShutDown = Atomic<Bool>(false)
    /// With `durability: replicated`: how long a durable write waits for one replica (nil: it does not wait).
    private let replicaTimeout: Duration?
    /// Called for every command sent (one round trip each; pipelined, so not one wait each).
    let onCommand: (@Sendable () -> Void)?

    /// - Parameters:
    ///   - tlsCA: PEM file of the CA that signed a `rediss://` server's certificate (default: system roots).
    ///   - timeout: Deadline of every call.
    ///   - group: One connection is opened per event loop of this group, when first used.
    ///   - primary: Shared with the store's other clients (made for `url` when nil).
    ///   - replicaTimeout: With `durability: replicated`, how long durable writes wait for a replica.
    public convenience init(
        url: RedisURL, tlsCA: String? = nil, timeout: Duration, group: any EventLoopGroup, primary: RedisPrimary? = nil, replicaTimeout: Duration? = nil
    ) throws {
        try self.init(url: url, tlsCA: tlsCA, timeout: timeout, scripts: [], group: group, primary: primary, replicaTimeout: replicaTimeout, onCommand: nil)
    }

    init(
        url: RedisURL, tlsCA: String?, timeout: Duration, scripts: [RedisScript], group: any EventLoopGroup, primary: RedisPrimary?,
        replicaTimeout: Duration? = nil, onCommand: (@Sendable () -> Void)?
    ) throws {
        self.url = url
        self.replicaTimeout = replicaTimeout
        self.onCommand = onCommand
        self.scripts = scripts
        self.timeout = timeout
        tls = try Self.tlsContext(for: url, ca: tlsCA)
        self.primary = primary ?? RedisPrimary(url: url, tls: tls)
        locals = LoopLocal(group: group) { LoopConnection(eventLoop: $0) }
        clusterLoops = self.primary.cluster == nil ? nil : LoopLocal(group: group) { ClusterLoop(eventLoop: $0) }
        eventLoops = locals.eventLoops
        defaultEventLoop = eventLoops[0]
    }

    /// Sends a command and returns its reply; Redis error replies throw `RedisError.server`.
    public func send(_ arguments: [String]) async throws -> RedisReply {
        try await send(arguments, on: defaultEventLoop).get()
    }

    /// Sends a command on `eventLoop`'s connection; the future completes on `eventLoop`.
    public func send(_ arguments: [String], on eventLoop: any EventLoop) -> EventLoopFuture<RedisReply> {
        send(arguments, on: eventLoop, longer: .zero)
    }

    /// `send` with a deadline `longer` than the client's timeout (a write that waits for a replica).
    private func send(_ arguments: [String], on eventLoop: any EventLoop, longer: Duration) -> EventLoopFuture<RedisReply> {
        guard let local = locals[eventLoop] else {
            let fallback = defaultEventLoop
            return fallback.flatSubmit { self.send(arguments, on: fallback, longer: longer) }.hop(to: eventLoop)
        }
        guard eventLoop.inEventLoop else { return eventLoop.flatSubmit { self.send(arguments, on: eventLoop, longer: longer) } }
        guard !isShutDown.load(ordering: .relaxed) else {
            return eventLoop.makeFailedFuture(RedisError.unavailable("client shut down"))
        }
        let deadline = NIODeadline.now() + TimeAmount(timeout + longer)
        if let cluster = primary.cluster, let loop = clusterLoops?[eventLoop] {
            return clusterSendOne(arguments, slot: Self.slot(of: arguments), cluster: cluster, loop: loop, deadline: deadline)
        }
        switch local.state {
        case .ready(let connection, let generation) where connection.isActive && generation == primary.generation:
            onCommand?()
            return connection.send(arguments, deadline: deadline)
        default:
            return connection(local, before: deadline).flatMap { [onCommand] connection in
                onCommand?()
                return connection.send(arguments, deadline: deadline)
            }
        }
    }

    /// Runs a script by `EVALSHA`, loading it first when Redis answers `NOSCRIPT`; the future
    /// completes on `eventLoop`. A `durable` write on a client with a `replicaTimeout`
    /// (`durability: replicated`) has `WAIT 1 replica_timeout` right behind it in the same
    /// flush and succeeds only when a replica has it (else `RedisError.notReplicated`).
    func evaluate(_ script: RedisScript, keys: [String], arguments: [String], durable: Bool = true, on eventLoop: any EventLoop) -> EventLoopFuture<RedisReply> {
        let command = ["EVALSHA", script.sha1, String(keys.count)] + keys + arguments
        let replicaWait = durable ? replicaTimeout : nil
        return run(command, replicaWait: replicaWait, on: eventLoop).flatMapError { error in
            guard case RedisError.server(let message) = error, message.hasPrefix("NOSCRIPT") else {
                return eventLoop.makeFailedFuture(error)
            }
            let load = ["SCRIPT", "LOAD", script.source]
            let loading =
                self.primary.cluster == nil
                ? self.send(load, on: eventLoop) : self.clusterExchange(load, slot: keys.first.map(HashSlot.of), on: eventLoop).map(\.reply)
            return loading.flatMap { _ in self.run(command, replicaWait: replicaWait, on: eventLoop) }
        }
    }

    /// Sends `command`; with `replicaWait`, `WAIT 1` goes right behind it and a write no replica
    /// confirmed fails as `RedisError.notReplicated`.
    private func run(_ command: [String], replicaWait: Duration?, on eventLoop: any EventLoop) -> EventLoopFuture<RedisReply> {
        guard let replicaWait else { return send(command, on: eventLoop) }
        let waitCommand = ["WAIT", "1", String(replicaWait.milliseconds)]
        let written: EventLoopFuture<(reply: RedisReply, then: RedisReply?)>
        if primary.cluster != nil {
            // The WAIT goes to the node that took the write, wherever redirects led it.
            written = clusterExchange(command, slot: Self.slot(of: command), then: waitCommand, on: eventLoop, longer: replicaWait)
        } else {
            let write = send(command, on: eventLoop, longer: replicaWait)
            let wait = send(waitCommand, on: eventLoop, longer: replicaWait)
            written = write.and(wait).map { ($0, $1) }
        }
        return written.flatMapThrowing { reply, acknowledged in
            guard case .integer(let replicas)? = acknowledged, replicas >= 1 else { throw RedisError.notReplicated }
            return reply
        }
    }

    /// Opens every connection now (instead of on the first calls); on a cluster, one per primary per loop.
    public func connect() async {
        if primary.cluster != nil {
            await connectToPrimaries()
            return
        }
        await withTaskGroup(of: Void.self) { group in
            for local in eventLoops.compactMap({ locals[$0] }) {
                group.addTask { _ = try? await self.send(["PING"], on: local.eventLoop).get() }
            }
        }
    }

    /// Closes every connection; later calls fail.
    public func shutdown() async {
        isShutDown.store(true, ordering: .relaxed)
        for local in eventLoops.compactMap({ locals[$0] }) {
            let connection = try? await local.eventLoop.submit { () -> RedisConnection? in
                defer { local.state = .idle(failures: 0) }
                switch local.state {
                case .ready(let connection, _): return connection
                default: return nil
                }
            }.get()
            await connection?.close()
        }
        await closeClusterConnections()
    }

    /// The loop's connection to the primary, opening it when needed, by `deadline`. On the loop.
    private func connection(_ local: LoopConnection, before deadline: NIODeadline) -> EventLoopFuture<RedisConnection> {
        let primary = primary
        return connection(local, generation: primary.generation, before: deadline, failed: { primary.connectionFailed() }) { eventLoop in
            self.open(on: eventLoop)
        }
    }

    /// `local`'s connection, opening it with `open` when needed (or when it is of an older
    /// `generation`), by `deadline`; `failed` hears of each connection lost or not opened. On the loop.
    func connection(
        _ local: LoopConnection, generation current: Int, before deadline: NIODeadline, failed: @escaping @Sendable () -> Void,
        open: (any EventLoop) -> EventLoopFuture<RedisConnection>
    ) -> EventLoopFuture<RedisConnection> {
        let eventLoop = local.eventLoop
        let opening: EventLoopFuture<RedisConnection>
        switch local.state {
        case .ready(let connection, let generation) where connection.isActive && generation == current:
            return eventLoop.makeSucceededFuture(connection)
        case .connecting(let future, _):
            opening = future
        case .backingOff(let until, _, let reason, let generation) where generation == current && NIODeadline.now() < until:
            return eventLoop.makeFailedFuture(RedisError.unavailable(reason))
        case .ready(let old, _):
            // Lost, or of a primary that is no more: a new one (to wherever the primary is now).
            if old.isActive { old.channel.close(promise: nil) } else { failed() }
            fallthrough
        case .idle, .backingOff:
            let failures = local.failures
            let generation = current
            let future = open(eventLoop)
            local.state = .connecting(future, failures: failures)
            future.whenComplete { result in
                guard case .connecting(let current, let failures) = local.state, current === future else { return }
                switch result {
                case .success(let connection):
                    local.state = .ready(connection, generation: generation)
                case .failure(let error):
                    failed()
                    let backoff = Self.backoff(afterFailures: failures + 1)
                    local.state = .backingOff(until: .now() + TimeAmount(backoff), failures: failures + 1, reason: "\(error)", generation: generation)
                }
            }
            opening = future
        }
        // Wait for the connection at most until the call's deadline.
        let promise = eventLoop.makePromise(of: RedisConnection.self)
        let timer = eventLoop.scheduleTask(deadline: deadline) { promise.fail(RedisError.unavailable("no connection within the deadline")) }
        opening.whenComplete { result in
            timer.cancel()
            switch result {
            case .success(let connection): promise.succeed(connection)
            case .failure(let error as RedisError): promise.fail(error)
            case .failure(let error): promise.fail(RedisError.unavailable("\(error)"))
            }
        }
        return promise.futureResult
    }

    /// Connects on `eventLoop` to the primary, authenticates, confirms it is the primary
    /// (Sentinel: `ROLE`), selects the database and loads the scripts.
    private func open(on eventLoop: any EventLoop) -> EventLoopFuture<RedisConnection> {
        primary.endpoint(on: eventLoop, timeout: setupTimeout).flatMap { endpoint in
            self.open(endpoint, on: eventLoop)
        }
    }

    /// How long opening a connection (and its setup) may take.
    var setupTimeout: Duration { max(timeout * 4, .milliseconds(250)) }

    /// Connects to `endpoint`: authenticates, selects the database, loads the scripts.
    func open(_ endpoint: RedisURL.Endpoint, on eventLoop: any EventLoop) -> EventLoopFuture<RedisConnection> {
        let commands: [[String]] =
            (url.authCommand.map { [$0] } ?? []) + (url.database != 0 ? [["SELECT", String(url.database)]] : [])
            + scripts.map { ["SCRIPT", "LOAD", $0.source] }
        return open(endpoint, commands: commands, setupTimeout: setupTimeout, on: eventLoop)
    }

    /// Connects to `endpoint` and runs the setup `commands`; on Sentinel, `ROLE` must say `master`.
    private func open(
        _ endpoint: RedisURL.Endpoint, commands: [[String]], setupTimeout: Duration, on eventLoop: any EventLoop
    ) -> EventLoopFuture<RedisConnection> {
        let primary = primary
        let onReadOnly: (@Sendable () -> Void)? = primary.isSentinel ? { @Sendable in primary.answeredReadOnly() } : nil
        let connecting = RedisConnection.connect(
            host: endpoint.host, port: endpoint.port, tls: tls, connectTimeout: setupTimeout, on: eventLoop, onReadOnly: onReadOnly
        )
        return connecting.flatMap { (connection: RedisConnection) -> EventLoopFuture<RedisConnection> in
            let deadline = NIODeadline.now() + TimeAmount(setupTimeout)
            // Pipelined: one round trip for the lot (Redis runs them in order, so AUTH and SELECT
            // come first), where one after another — some thirty script loads — could outlast
            // the setup time on a busy host and leave the client unable to connect at all.
            var setup = EventLoopFuture.andAllSucceed(commands.map { connection.send($0, deadline: deadline) }, on: eventLoop)
            if primary.isSentinel {
                setup = setup.flatMap { connection.send(["ROLE"], deadline: deadline) }.flatMapThrowing { (reply: RedisReply) in
                    guard RedisPrimary.saysPrimary(reply) else { throw RedisError.unavailable("\(endpoint) is not the primary (ROLE: \(reply))") }
                }
            }
            return setup.map { connection }.flatMapErrorThrowing { error in
                connection.channel.close(promise: nil)
                throw error
            }
        }
    }

    /// The TLS context of a `rediss://` URL (its sentinels too), nil for plain ones.
    static func tlsContext(for url: RedisURL, ca: String?) throws -> NIOSSLContext? {
        guard url.useTLS else { return nil }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        if let ca { configuration.trustRoots = .file(ca) }
        return try NIOSSLContext(configuration: configuration)
    }

    /// 50 ms doubling to at most 2 s, with up to 25% jitter so instances do not reconnect in step.
    static func backoff(afterFailures failures: Int) -> Duration {
        let base = min(2_000.0, 50.0 * pow2(min(failures - 1, 10)))
        return .milliseconds(Int64(base * Double.random(in: 0.75...1.0)))
    }

    private static func pow2(_ exponent: Int) -> Double { Double(1 << max(0, exponent)) }
}

/// One event loop's connection to Redis (or to one node of a cluster); only touched on that loop.
final class LoopConnection: @unchecked Sendable {
    enum State {
        case idle(failures: Int)
        case connecting(EventLoopFuture<RedisConnection>, failures: Int)
        /// Open, to the primary of `generation` (`RedisPrimary.generation`).
        case ready(RedisConnection, generation: Int)
        /// Not tried again before `until`, unless the primary changed since (`generation`):
        /// the failures were the old primary's.
        case backingOff(until: NIODeadline, failures: Int, reason: String, generation: Int)
    }

    let eventLoop: any EventLoop
    var state = State.idle(failures: 0)

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Consecutive failed attempts to open the connection.
    var failures: Int {
        switch state {
        case .idle(let failures), .connecting(_, let failures), .backingOff(_, let failures, _, _): failures
        case .ready: 0
        }
    }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
