import Foundation
import NIOCore
import NIOPosix
import SluiceCore
@testable import SluiceStore
import Testing
import TestSupport

@Suite(.serialized)
struct RedisClientTests {
    /// Every admission key is hash-tagged by partner and expires within what it must outlive (the
    /// quota day and a minute for the state, twice the lease for the leases), by Redis's clock —
    /// whether the script reads Redis `TIME` (nil) or is given a clock far from real time.
    @Test(arguments: [nil] + ClockEpoch.allCases)
    func keysAreHashTaggedAndExpire(_ epoch: ClockEpoch?) async throws {
        let client = try await makeRedisClient()
        let prefix = "ttl-\(UUID().uuidString.prefix(8))"
        let store = RedisStore(client: client, keyPrefix: prefix, clock: epoch.map { ManualClock($0).epochClock })
        let decision = try await store.admit(
            partner: "acme", limits: limits(rate: 10, burst: 20, quota: 100, concurrency: 5), lease: "l1", leaseDuration: .seconds(30)
        )
        #expect(decision.verdict == .admitted)
        guard case .array(let keys) = try await client.send(["KEYS", "\(prefix):*"]) else { Issue.record("no keys"); return }
        #expect(keys.count == 2)
        for case .string(let bytes) in keys {
            let key = String(decoding: bytes, as: UTF8.self)
            #expect(key.hasPrefix("\(prefix):{p:acme}:"))
            guard case .integer(let ttl) = try await client.send(["PTTL", key]) else { Issue.record("no ttl"); continue }
            let bounds: ClosedRange<Int64> = key.hasSuffix(":leases") ? 30_000...60_000 : 60_000...(86_400_000 + 61_000)
            #expect(bounds.contains(ttl), "\(key) expires in \(ttl) ms, expected \(bounds)")
        }
        await client.shutdown()
    }

    /// When Redis forgets the script (restart, SCRIPT FLUSH), it is loaded again transparently.
    /// (On a Redis of its own: a flush would also hit the scripts of tests running beside it.)
    @Test func scriptIsReloadedAfterFlush() async throws {
        let redis = try await RedisServer.start()
        let client = try await makeRedisClient(url: redis.url)
        let store = RedisStore(client: client, keyPrefix: "flush")
        #expect(try await store.admit(partner: "acme", limits: limits(rate: 1, burst: 5), lease: nil, leaseDuration: .seconds(1)).verdict == .admitted)
        _ = try await client.send(["SCRIPT", "FLUSH"])
        #expect(try await store.admit(partner: "acme", limits: limits(rate: 1, burst: 5), lease: nil, leaseDuration: .seconds(1)).tokensRemaining == 3)
        await client.shutdown()
        try await redis.stop()
    }

    /// A server that accepts but never answers costs a caller the deadline (50 ms), not more.
    @Test func callsTimeOut() async throws {
        let silent = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let client = try await makeRedisClient(url: "redis://127.0.0.1:\(silent.localAddress!.port!)", timeout: .milliseconds(50))
        // On a starved machine the connect itself may outlast 50 ms: that call fails as
        // unavailable (nothing sent) while the connection goes on opening, so the next one
        // reaches the silent server.
        var failure: RedisError?
        for _ in 0..<100 where failure == nil || failure == .unavailable("no connection within the deadline") {
            let started = ContinuousClock.now
            do {
                _ = try await client.send(["PING"])
                Issue.record("a server that never answers answered")
            } catch let error as RedisError {
                failure = error
            }
            #expect(ContinuousClock.now - started < .seconds(3), "a deadline, not a hang")
        }
        #expect(failure == .timeout)
        #expect(RedisError.timeout.mayHaveBeenApplied, "a command that timed out may still run")
        await client.shutdown()
        try await silent.close()
    }

    /// A connection's setup — authentication and some thirty script loads — goes in one round
    /// trip: behind replies 25 ms away, a store client with an 80-ms timeout (320 ms of setup)
    /// connects and answers. One load after another took 28 × 25 ms and never connected.
    @Test func setupIsOneRoundTrip() async throws {
        let proxy = try await SlowRepliesProxy.start(to: try RedisURL.parse(try await RedisServer.sharedURL()).get().port, delay: .milliseconds(25))
        let client = try RedisStore.makeClient(
            url: try RedisURL.parse("redis://127.0.0.1:\(proxy.port)/0").get(), tlsCA: nil, timeout: .milliseconds(80), group: MultiThreadedEventLoopGroup.singleton
        )
        let store = RedisStore(client: client, keyPrefix: "slow-\(UUID().uuidString)")
        // The first call may meet the connection still opening (nothing sent); it goes on opening.
        var verdict: AdmissionVerdict?
        var failures: [String] = []
        for _ in 0..<40 where verdict == nil {
            do {
                verdict = try await store.admit(partner: "acme", limits: limits(rate: 1, burst: 5), lease: nil, leaseDuration: .seconds(1)).verdict
            } catch {
                failures.append("\(error)")
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        #expect(verdict == .admitted, "\(failures)")
        await client.shutdown()
        try await proxy.stop()
    }

    /// A call that could not be sent says so (nothing of it can have been applied); one whose
    /// connection broke after it was sent may have been.
    @Test func failuresSayWhetherTheCommandMayHaveRun() async throws {
        let refused = try await makeRedisClient(url: "redis://127.0.0.1:\(try freePort())", timeout: .seconds(2))
        do {
            _ = try await refused.send(["SET", "k", "v"])
            Issue.record("expected a failure")
        } catch let error as RedisError {
            #expect(!error.mayHaveBeenApplied, "\(error)")
        }
        await refused.shutdown()

        let server = try await RedisServer.start()
        let client = try await makeRedisClient(url: server.url, timeout: .seconds(2))
        #expect(try await client.send(["PING"]) == .status("PONG"))
        // The server dies while the command waits for its answer.
        let pending = Task { try await client.send(["BLPOP", "never-filled", "0"]) }
        try await Task.sleep(for: .milliseconds(100))
        try await server.stop()
        do {
            _ = try await pending.value
            Issue.record("expected a failure")
        } catch let error as RedisError {
            #expect(error.mayHaveBeenApplied, "\(error)")
        }
        await client.shutdown()
    }

    /// A refused connection fails at once, and while the client backs off, calls fail without
    /// connecting: each call ends `unavailable`, never `timeout` — the deadline (10 s, far more
    /// than any machine needs to be refused) is not what ended it.
    @Test func refusedConnectionsFailFast() async throws {
        let client = try await makeRedisClient(url: "redis://127.0.0.1:\(try freePort())", timeout: .seconds(10))
        for _ in 0..<5 {
            do {
                _ = try await client.send(["PING"])
                Issue.record("expected a failure")
            } catch let error as RedisError {
                guard case .unavailable = error else { Issue.record("expected unavailable, got \(error)"); continue }
            }
        }
        await client.shutdown()
    }

    /// A connection backing off after failures stays shut for its own primary, but not once the
    /// primary changed (a failover): the failures were the old primary's.
    @Test func aChangeOfPrimaryEndsTheBackoff() async throws {
        let shared = try RedisURL.parse(try await RedisServer.sharedURL()).get()
        let client = try await makeRedisClient()
        defer { Task { await client.shutdown() } }
        let eventLoop = client.defaultEventLoop
        let local = LoopConnection(eventLoop: eventLoop)
        let open: @Sendable (any EventLoop) -> EventLoopFuture<RedisConnection> = { eventLoop in
            RedisConnection.connect(host: shared.host, port: shared.port, tls: nil, connectTimeout: .seconds(2), on: eventLoop)
        }
        func connect(generation: Int) async throws -> RedisConnection {
            try await eventLoop.flatSubmit {
                local.state = .backingOff(until: .now() + .hours(1), failures: 3, reason: "refused", generation: 4)
                return client.connection(local, generation: generation, before: .now() + .seconds(2), failed: {}, open: open)
            }.get()
        }
        await #expect(throws: RedisError.self, "the same primary: still backing off") { try await connect(generation: 4) }
        let connection = try await connect(generation: 5)
        #expect(try await eventLoop.flatSubmit { connection.send(["PING"], deadline: .now() + .seconds(2)) }.get() == .status("PONG"))
        await connection.close()
    }

    /// After Redis crashes and comes back, calls succeed again without a new client.
    @Test func reconnectsAfterRestart() async throws {
        let server = try await RedisServer.start()
        let client = try await makeRedisClient(url: server.url, timeout: .seconds(2))
        #expect(try await client.send(["PING"]) == .status("PONG"))
        try await server.stop()
        await #expect(throws: RedisError.self) { try await client.send(["PING"]) }
        try await server.restart()
        try await eventually("the client reconnected") { (try? await client.send(["PING"])) == .status("PONG") }
        await client.shutdown()
        try await server.stop()
    }

    /// The password and database from the URL are used; a wrong password is a clear error.
    @Test func authenticatesAndSelectsTheDatabase() async throws {
        let server = try await RedisServer.start(extraArguments: ["--requirepass", "s3cret"])
        let client = try await makeRedisClient(url: "redis://:s3cret@127.0.0.1:\(server.port)/3")
        _ = try await client.send(["SET", "marker", "db3"])
        let other = try await makeRedisClient(url: "redis://:s3cret@127.0.0.1:\(server.port)/0")
        #expect(try await other.send(["GET", "marker"]) == .null)
        #expect(try await client.send(["GET", "marker"]) == .string(Array("db3".utf8)))
        let wrong = try await makeRedisClient(url: "redis://:nope@127.0.0.1:\(server.port)/0")
        await #expect(throws: RedisError.self) { try await wrong.send(["PING"]) }
        for each in [client, other, wrong] { await each.shutdown() }
        try await server.stop()
    }

    /// rediss:// talks TLS to Redis, trusting the configured CA.
    @Test func speaksTLS() async throws {
        let pki = try TestPKI(directory: FileManager.default.temporaryDirectory.appendingPathComponent("redis-tls-\(UUID().uuidString)"))
        let server = try await RedisServer.start(tls: (pki.serverCertificatePath, pki.serverKeyPath))
        let client = try await makeRedisClient(url: "rediss://localhost:\(server.tlsPort!)/0", tlsCA: pki.caPath)
        #expect(try await client.send(["PING"]) == .status("PONG"))
        let untrusting = try await makeRedisClient(url: "rediss://localhost:\(server.tlsPort!)/0", timeout: .milliseconds(500))
        await #expect(throws: RedisError.self) { try await untrusting.send(["PING"]) }
        await client.shutdown()
        await untrusting.shutdown()
        try await server.stop()
        try? FileManager.default.removeItem(at: pki.directory)
    }
}
