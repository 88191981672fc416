public import Foundation
import Logging
public import NIOCore
import NIOSSL
public import SluiceCore
import Synchronization

/// Where a Redis client's connections go (SPEC §8): the one address of a `redis://` URL, or
/// the primary the sentinels of a `redis+sentinel://` URL name. Every client of one store
/// shares it. A connection remembers the `generation` it was opened in; when the primary
/// changes (a `+switch-master` message, a `READONLY` answer, a rediscovery that finds another
/// address) the generation moves on and older connections are not used again.
public final class RedisPrimary: Sendable {
    /// Why the primary was looked up again or changed (`sluice_store_topology_changes_total{reason}`).
    public enum Reason: String, Sendable {
        /// A sentinel announced a failover.
        case switchMaster = "switch-master"
        /// The Redis the gateway wrote to answered `READONLY`: it is a replica now.
        case readOnly = "readonly"
        /// Asked again (a connection lost or refused, a new subscription), the sentinels named another.
        case rediscovered
    }

    /// A change of primary, as logs, metrics and the admin API see it.
    public struct Change: Sendable {
        public var reason: Reason
        public var old: RedisURL.Endpoint?
        public var new: RedisURL.Endpoint
        public var at: Date
    }

    private struct State {
        var current: RedisURL.Endpoint?
        /// The last change (nil until the primary first changes).
        var lastChange: Change?
        /// Set when the current primary must be asked for again before the next connection.
        var stale = false
        /// The sentinel (index in the URL) whose answer was confirmed last: asked first next time.
        var firstSentinel = 0
    }

    let url: RedisURL
    private let tls: NIOSSLContext?
    private let state: Mutex<State>
    private let generationCounter = Atomic<Int>(0)
    private let onChange: @Sendable (Change) -> Void
    private let logger: Logger
    /// For `redis+cluster://`: the slot map that decides where each command goes (there is no one primary).
    public let cluster: RedisCluster?

    /// - Parameters:
    ///   - tls: For `rediss+sentinel://`: the sentinels speak TLS too.
    ///   - onChange: Called once for every change of primary (not for the first discovery).
    ///   - onClusterChange: On a cluster, called once for every change of the slot map.
    ///   - onRedirect: On a cluster, called with `moved` or `ask` for every redirect.
    init(
        url: RedisURL, tls: NIOSSLContext?, logger: Logger = Logger(label: "sluice.store"), onChange: @escaping @Sendable (Change) -> Void = { _ in },
        onClusterChange: @escaping @Sendable (RedisCluster.ChangeReason) -> Void = { _ in }, onRedirect: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.url = url
        self.tls = tls
        self.logger = logger
        self.onChange = onChange
        switch url.topology {
        case .single:
            state = Mutex(State(current: RedisURL.Endpoint(host: url.host, port: url.port)))
            cluster = nil
        case .sentinel:
            state = Mutex(State())
            cluster = nil
        case .cluster:
            state = Mutex(State())
            cluster = RedisCluster(url: url, tls: tls, logger: logger, onChange: onClusterChange, onRedirect: onRedirect)
        }
    }

    public var isSentinel: Bool {
        if case .sentinel = url.topology { return true }
        return false
    }

    /// Moves on whenever the primary changes; connections of an older generation are dropped.
    var generation: Int { generationCounter.load(ordering: .relaxed) }

    /// The primary now, if known, and the last change of it.
    public var current: (endpoint: RedisURL.Endpoint?, lastChange: Change?) {
        state.withLock { ($0.current, $0.lastChange) }
    }

    /// The address to connect to: the known one, or the sentinels' answer (asked in turn, each
    /// within `timeout`) when none is known or it went stale.
    func endpoint(on eventLoop: any EventLoop, timeout: Duration) -> EventLoopFuture<RedisURL.Endpoint> {
        let (known, stale) = state.withLock { ($0.current, $0.stale) }
        if let known, !stale || !isSentinel { return eventLoop.makeSucceededFuture(known) }
        return discover(on: eventLoop, timeout: timeout).map { found in
            self.adopt(found, reason: .rediscovered)
            return found
        }
    }

    /// A connection to the primary was lost or could not be opened: the next one asks the
    /// sentinels again (a single Redis stays where it is).
    func connectionFailed() {
        guard isSentinel else { return }
        state.withLock { $0.stale = true }
    }

    /// The Redis answered `READONLY`: it was demoted. Every connection goes; the next asks the sentinels.
    func answeredReadOnly() {
        guard isSentinel else { return }
        state.withLock { $0.stale = true }
        generationCounter.add(1, ordering: .relaxed)
        logger.warning("the Redis primary answered READONLY (it is a replica now); asking the sentinels", metadata: ["master": .string(masterName)])
    }

    /// A sentinel announced `+switch-master` for this master: connections move to `new`.
    func switched(to new: RedisURL.Endpoint) {
        adopt(new, reason: .switchMaster)
    }

    /// Takes `found` as the primary; a different one than before is a change (counted, logged
    /// once, older connections dropped).
    private func adopt(_ found: RedisURL.Endpoint, reason: Reason) {
        let change: Change? = state.withLock { state in
            state.stale = false
            let old = state.current
            state.current = found
            guard let old else {
                logger.info("found the Redis primary", metadata: ["master": .string(masterName), "primary": .string(found.description)])
                return nil
            }
            guard old != found else { return nil }
            let change = Change(reason: reason, old: old, new: found, at: Date())
            state.lastChange = change
            return change
        }
        guard let change else { return }
        generationCounter.add(1, ordering: .relaxed)
        logger.warning(
            "the Redis primary changed",
            metadata: [
                "master": .string(masterName), "old": .string(change.old?.description ?? "-"), "new": .string(change.new.description),
                "reason": .string(reason.rawValue),
            ]
        )
        onChange(change)
    }

    private var masterName: String {
        if case .sentinel(let master, _, _, _) = url.topology { return master }
        return ""
    }

    // MARK: - Asking the sentinels

    /// Why no sentinel named a primary.
    struct NoPrimary: Error, CustomStringConvertible {
        var reasons: [String]
        var description: String { "no sentinel named the primary: " + reasons.joined(separator: "; ") }
    }

    /// Asks the sentinels in turn for the primary's address and takes the first answer that
    /// `ROLE` confirms (the Sentinel client rules): a sentinel that has not yet heard of a
    /// failover still names the old primary, dead or demoted, and is passed over. The sentinel
    /// whose answer was confirmed is asked first the next time.
    private func discover(on eventLoop: any EventLoop, timeout: Duration) -> EventLoopFuture<RedisURL.Endpoint> {
        guard case .sentinel(let master, let sentinels, _, _) = url.topology else {
            return eventLoop.makeSucceededFuture(RedisURL.Endpoint(host: url.host, port: url.port))
        }
        let first = state.withLock { $0.firstSentinel }
        @Sendable func ask(_ tried: Int, _ reasons: [String]) -> EventLoopFuture<RedisURL.Endpoint> {
            guard tried < sentinels.count else {
                let failure = NoPrimary(reasons: reasons)
                logger.warning("cannot find the Redis primary", metadata: ["master": .string(master), "error": .string(failure.description)])
                return eventLoop.makeFailedFuture(RedisError.unavailable(failure.description))
            }
            let index = (first + tried) % sentinels.count
            let sentinel = sentinels[index]
            return RedisConnection.oneShot(["SENTINEL", "GET-MASTER-ADDR-BY-NAME", master], at: sentinel, tls: tls, auth: sentinelAuth, timeout: timeout, on: eventLoop)
                .flatMapThrowing { reply -> RedisURL.Endpoint in
                    guard case .array(let parts) = reply, parts.count == 2, case .string(let host) = parts[0], case .string(let port) = parts[1],
                        let number = Int(String(decoding: port, as: UTF8.self))
                    else {
                        throw RedisError.unavailable("sentinel \(sentinel) does not know the master '\(master)'")
                    }
                    return RedisURL.Endpoint(host: String(decoding: host, as: UTF8.self), port: number)
                }
                .flatMap { named in self.confirmPrimary(named, on: eventLoop, timeout: timeout) }
                .map { confirmed in
                    self.state.withLock { $0.firstSentinel = index }
                    return confirmed
                }
                .flatMapError { error in ask(tried + 1, reasons + ["\(sentinel): \(error)"]) }
        }
        return ask(0, [])
    }

    /// `endpoint`, once its `ROLE` says `master`.
    private func confirmPrimary(_ endpoint: RedisURL.Endpoint, on eventLoop: any EventLoop, timeout: Duration) -> EventLoopFuture<RedisURL.Endpoint> {
        RedisConnection.oneShot(["ROLE"], at: endpoint, tls: tls, auth: url.authCommand, timeout: timeout, on: eventLoop).flatMapThrowing { reply in
            guard Self.saysPrimary(reply) else { throw RedisError.unavailable("it names \(endpoint), which is not the primary (ROLE: \(reply))") }
            return endpoint
        }
    }

    /// Whether a `ROLE` reply says `master`.
    static func saysPrimary(_ role: RedisReply) -> Bool {
        guard case .array(let parts) = role, case .string(let name) = parts.first else { return false }
        return name == Array("master".utf8)
    }

    /// `AUTH` for the sentinels, when the URL gives them a password.
    var sentinelAuth: [String]? {
        guard case .sentinel(_, _, let user, let password) = url.topology, let password else { return nil }
        return user.map { ["AUTH", $0, password] } ?? ["AUTH", password]
    }

    // MARK: - Watching for failovers

    /// Subscribes to `+switch-master` on one sentinel after another until cancelled: each
    /// announcement for this master moves the primary at once (a rediscovery after every
    /// subscription catches one missed meanwhile).
    public func watch(on eventLoop: any EventLoop, timeout: Duration) async {
        guard case .sentinel(let master, let sentinels, _, _) = url.topology else { return }
        var index = 0
        while !Task.isCancelled {
            let sentinel = sentinels[index % sentinels.count]
            index += 1
            do {
                try await subscribe(at: sentinel, master: master, on: eventLoop, timeout: timeout)
            } catch {
                logger.debug("sentinel subscription ended", metadata: ["sentinel": .string(sentinel.description), "error": .string("\(error)")])
            }
            if index % sentinels.count == 0 { try? await Task.sleep(for: .seconds(1)) }
        }
    }

    private func subscribe(at sentinel: RedisURL.Endpoint, master: String, on eventLoop: any EventLoop, timeout: Duration) async throws {
        let announcements: @Sendable (RedisReply) -> Void = { [weak self] message in
            guard let self, case .array(let parts) = message, parts.count == 3, case .string(let payload) = parts[2] else { return }
            let fields = String(decoding: payload, as: UTF8.self).split(separator: " ")
            guard fields.count == 5, fields[0] == master, let port = Int(fields[4]) else { return }
            self.switched(to: RedisURL.Endpoint(host: String(fields[3]), port: port))
        }
        let connection = try await RedisConnection.connect(
            host: sentinel.host, port: sentinel.port, tls: tls, connectTimeout: timeout, on: eventLoop, onPush: announcements
        ).get()
        try await withTaskCancellationHandler {
            let deadline = NIODeadline.now() + TimeAmount(timeout)
            let commands = (sentinelAuth.map { [$0] } ?? []) + [["SUBSCRIBE", "+switch-master"]]
            for command in commands {
                _ = try await eventLoop.flatSubmit { connection.send(command, deadline: deadline) }.get()
            }
            if let found = try? await discover(on: eventLoop, timeout: timeout).get() { adopt(found, reason: .rediscovered) }
            try await connection.channel.closeFuture.get()
        } onCancel: {
            connection.channel.close(promise: nil)
        }
    }
}
