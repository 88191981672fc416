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

/// A small pool of pipelined Redis connections (NIO channels with the hiredis reader).
///
/// - Every call has a deadline (`timeout`, default 50 ms): a dead Redis never stalls a caller.
/// - A connection that fails is reopened on demand with exponential backoff; while backing off,
///   calls fail at once instead of waiting for a connect timeout.
/// - `redis://` and `rediss://` (TLS via swift-nio-ssl); `AUTH` and `SELECT` on connect.
public final class RedisClient: Sendable {
    private enum Slot {
        case idle(failures: Int)
        case connecting(Task<RedisConnection, any Error>, failures: Int)
        case ready(RedisConnection)
        case backingOff(until: ContinuousClock.Instant, failures: Int, reason: String)
    }

    private let url: RedisURL
    /// Loaded on every new connection, so the first `EVALSHA` finds them.
    private let scripts: [RedisScript]
    private let tls: NIOSSLContext?
    private let timeout: Duration
    private let group: any EventLoopGroup
    /// One connection's state.
    private final class ConnectionSlot: Sendable {
        let state = Mutex(Slot.idle(failures: 0))
    }

    private let slots: [ConnectionSlot]
    private let nextSlot = Atomic<Int>(0)
    private let isShutDown = Atomic<Bool>(false)
    /// Called for every command sent (one round trip each; pipelined, so not one wait each).
    private let onCommand: (@Sendable () -> Void)?

    /// - Parameters:
    ///   - tlsCA: PEM file of the CA that signed a `rediss://` server's certificate (default: system roots).
    ///   - timeout: Deadline of every call.
    ///   - connections: How many connections to pipeline over.
    public convenience init(url: RedisURL, tlsCA: String? = nil, timeout: Duration, connections: Int = 2, group: any EventLoopGroup) throws {
        try self.init(url: url, tlsCA: tlsCA, timeout: timeout, connections: connections, scripts: [], group: group, onCommand: nil)
    }

    init(
        url: RedisURL, tlsCA: String?, timeout: Duration, connections: Int, scripts: [RedisScript], group: any EventLoopGroup,
        onCommand: (@Sendable () -> Void)?
    ) throws {
        self.url = url
        self.onCommand = onCommand
        self.scripts = scripts
        self.timeout = timeout
        self.group = group
        if url.useTLS {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.minimumTLSVersion = .tlsv12
            if let tlsCA { configuration.trustRoots = .file(tlsCA) }
            tls = try NIOSSLContext(configuration: configuration)
        } else {
            tls = nil
        }
        slots = (0..<max(1, connections)).map { _ in ConnectionSlot() }
    }

    /// Sends a command and returns its reply; Redis error replies throw `RedisError.server`.
    public func send(_ arguments: [String]) async throws -> RedisReply {
        let deadline = ContinuousClock.now + timeout
        let connection = try await connection(before: deadline)
        onCommand?()
        return try await connection.send(RedisCommandEncoder.encode(arguments), deadline: .now() + TimeAmount(deadline - .now))
    }

    /// Runs a script by `EVALSHA`, loading it first when Redis answers `NOSCRIPT`.
    func evaluate(_ script: RedisScript, keys: [String], arguments: [String]) async throws -> RedisReply {
        let command = ["EVALSHA", script.sha1, String(keys.count)] + keys + arguments
        do {
            return try await send(command)
        } catch RedisError.server(let message) where message.hasPrefix("NOSCRIPT") {
            _ = try await send(["SCRIPT", "LOAD", script.source])
            return try await send(command)
        }
    }

    /// Opens every connection now (instead of on the first calls).
    public func connect() async {
        await withTaskGroup(of: Void.self) { group in
            for _ in slots { group.addTask { _ = try? await self.send(["PING"]) } }
        }
    }

    /// Closes every connection; later calls fail.
    public func shutdown() async {
        isShutDown.store(true, ordering: .relaxed)
        for slot in slots {
            let state = slot.state.withLock { state in
                defer { state = .idle(failures: 0) }
                return state
            }
            switch state {
            case .ready(let connection): await connection.close()
            case .connecting(let task, _): await (try? task.value)?.close()
            default: break
            }
        }
    }

    private func connection(before deadline: ContinuousClock.Instant) async throws -> RedisConnection {
        guard !isShutDown.load(ordering: .relaxed) else { throw RedisError.unavailable("client shut down") }
        let index = nextSlot.add(1, ordering: .relaxed).newValue % slots.count
        let slot = slots[index]
        enum Next {
            case use(RedisConnection)
            case wait(Task<RedisConnection, any Error>)
            case fail(String)
        }
        let next: Next = slot.state.withLock { state in
            switch state {
            case .ready(let connection) where connection.isActive:
                return .use(connection)
            case .connecting(let task, _):
                return .wait(task)
            case .backingOff(let until, _, let reason) where ContinuousClock.now < until:
                return .fail(reason)
            case .ready, .idle, .backingOff:
                let failures = Self.failures(in: state)
                let task = Task { try await self.open() }
                state = .connecting(task, failures: failures)
                return .wait(task)
            }
        }
        switch next {
        case .use(let connection):
            return connection
        case .fail(let reason):
            throw RedisError.unavailable(reason)
        case .wait(let task):
            return try await waitForConnection(task, slot: slot, deadline: deadline)
        }
    }

    /// Waits for a connection attempt, at most until `deadline`; records its outcome in the slot.
    private func waitForConnection(
        _ task: Task<RedisConnection, any Error>, slot: ConnectionSlot, deadline: ContinuousClock.Instant
    ) async throws -> RedisConnection {
        let outcome: Result<RedisConnection, any Error>? = try await withThrowingTaskGroup(of: Result<RedisConnection, any Error>?.self) { group in
            group.addTask { await task.result }
            group.addTask {
                try? await Task.sleep(until: deadline)
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
        guard let outcome else { throw RedisError.timeout }
        slot.state.withLock { state in
            guard case .connecting(let current, let failures) = state, current == task else { return }
            switch outcome {
            case .success(let connection):
                state = .ready(connection)
            case .failure(let error):
                let backoff = Self.backoff(afterFailures: failures + 1)
                state = .backingOff(until: .now + backoff, failures: failures + 1, reason: "\(error)")
            }
        }
        switch outcome {
        case .success(let connection): return connection
        case .failure(let error as RedisError): throw error
        case .failure(let error): throw RedisError.unavailable("\(error)")
        }
    }

    /// Connects, authenticates and selects the database.
    private func open() async throws -> RedisConnection {
        let connection = try await RedisConnection.connect(
            host: url.host, port: url.port, tls: tls, connectTimeout: max(timeout * 4, .milliseconds(250)), group: group
        )
        do {
            let deadline = NIODeadline.now() + TimeAmount(max(timeout * 4, .milliseconds(250)))
            if let password = url.password {
                let command = url.username.map { ["AUTH", $0, password] } ?? ["AUTH", password]
                _ = try await connection.send(RedisCommandEncoder.encode(command), deadline: deadline)
            }
            if url.database != 0 {
                _ = try await connection.send(RedisCommandEncoder.encode(["SELECT", String(url.database)]), deadline: deadline)
            }
            for script in scripts {
                _ = try await connection.send(RedisCommandEncoder.encode(["SCRIPT", "LOAD", script.source]), deadline: deadline)
            }
            return connection
        } catch {
            await connection.close()
            throw error
        }
    }

    private static func failures(in slot: Slot) -> Int {
        switch slot {
        case .idle(let failures), .connecting(_, let failures), .backingOff(_, let failures, _): failures
        case .ready: 0
        }
    }

    /// 50 ms doubling to at most 2 s, with up to 25% jitter so instances do not reconnect in step.
    static func backoff(afterFailures failures: Int) -> Duration {
        let base = min(2_000.0, 50.0 * pow2(min(failures - 1, 10)))
        return .milliseconds(Int64(base * Double.random(in: 0.75...1.0)))
    }

    private static func pow2(_ exponent: Int) -> Double { Double(1 << max(0, exponent)) }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
