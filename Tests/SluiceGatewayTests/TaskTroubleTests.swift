import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOPosix
import SluiceCore
import SluiceStore
import TestSupport
import Testing

/// Async tasks when things go wrong (SPEC §4.3, issue 12 point 7): Redis down or restarted
/// empty, an instance killed with -9 while it runs tasks, and a graceful shutdown that hands
/// running tasks back — every task still finishes, every webhook is still delivered.
@Suite(.serialized)
struct TaskTroubleTests {
    /// The async routes on `redis`, 4 workers with a 1 s lease, and a webhook to `receiverPort`.
    private static func configure(redis: String, receiverPort: Int? = nil) -> (inout TestPolicies) -> Void {
        { policies in
            TaskTests.addRoutes(&policies)
            policies.useRedis(redis, timeout: "1s")
            policies.files["gateway.yaml"]! += "tasks: { workers: 4, lease: 1s }\n"
            if let receiverPort { policies.addWebhook(url: "http://127.0.0.1:\(receiverPort)/hook") }
        }
    }

    private static func messageID(of task: String) -> String { "msg_" + task.dropFirst(4) }

    private static func statuses(_ document: [String: Any]) -> [String?] {
        (document["history"] as? [[String: Any]] ?? []).map { $0["status"] as? String }
    }

    /// While Redis is down, accepting and reading tasks answer 503 with `Retry-After: 1`; when it
    /// comes back empty (its queue and consumer group gone: `NOGROUP`), the workers recreate
    /// them and new tasks run, without a gateway restart.
    @Test func redisOutageAnswers503AndAnEmptyRestartRecovers() async throws {
        let redis = try await RedisServer.start()
        try await GatewayHarness.with(Self.configure(redis: redis.url)) { gateway in
            let before = try #require(try await gateway.acceptTask("/v2/price-calculations?ms=1").json()["task_id"] as? String)
            #expect(try await gateway.finishedTask("/v2/tasks/\(before)")["status"] as? String == "succeeded")

            try await redis.stop()
            let refusedAccept = try await gateway.acceptTask("/v2/price-calculations?ms=1")
            let refusedRead = try await gateway.partner(.GET, "/v2/tasks/\(before)")
            for answer in [refusedAccept, refusedRead] {
                #expect(answer.status == 503 && answer.header("Retry-After") == "1")
                #expect(try answer.json()["type"] as? String == "urn:sluice:problem:upstream-unavailable")
            }

            try await redis.restart()
            var after = ""
            try await eventually("tasks are accepted again") {
                let answer = try await gateway.acceptTask("/v2/price-calculations?ms=1")
                after = try answer.json()["task_id"] as? String ?? ""
                return answer.status == 202
            }
            #expect(try await gateway.finishedTask("/v2/tasks/\(after)")["status"] as? String == "succeeded")
            #expect(try await gateway.partner(.GET, "/v2/tasks/\(before)").status == 404, "Redis restarted empty")
        }
        try await redis.stop()
    }

    /// The background loops (task workers, webhook sender, usage flush) that poll a Redis which
    /// went away count every failed call in `sluice_store_errors_total` and log one line when the
    /// trouble starts and one when it ends — not one per poll, and never nothing.
    @Test func backgroundLoopsReportStoreTrouble() async throws {
        let redis = try await RedisServer.start()
        try await withWebhookReceiver { _, receiverPort in
            try await GatewayHarness.with(Self.configure(redis: redis.url, receiverPort: receiverPort)) { gateway in
                #expect(try await gateway.acceptTask("/v2/price-calculations?ms=1").status == 202)
                let errorsBefore = try await gateway.metric("sluice_store_errors_total") ?? 0
                try await redis.stop()
                func lines(_ message: String) throws -> [[String: Any]] { try gateway.logLines().filter { $0["message"] as? String == message } }
                try await eventually("both polling loops noticed") {
                    try lines("task workers: store calls are failing; retrying").count == 1
                        && lines("webhook sender: store calls are failing; retrying").count == 1
                }
                try await eventually("failed polls are counted") { try await gateway.metric("sluice_store_errors_total") ?? 0 >= errorsBefore + 4 }
                #expect(try lines("task workers: store calls are failing; retrying").count == 1, "one line per streak")
                #expect(try lines("task workers: store calls are failing; retrying").first?["error"] != nil)
                try await redis.restart()
                try await eventually("the loops say the store works again") {
                    try lines("task workers: store calls work again").count == 1 && lines("webhook sender: store calls work again").count == 1
                }
                let recovered = try #require(try lines("task workers: store calls work again").first)
                #expect(recovered["failed_calls"] as? Int ?? 0 >= 1, "\(recovered)")
            }
        }
        try await redis.stop()
    }

    /// Task accepts, the worker's read of a request and its result travel on the store's bulk
    /// lane with `store.bulk_timeout` (5 s), not the request path's `store.timeout` (50 ms): a
    /// 10 MiB task is accepted and run, and an accept that meets a Redis stalled for 300 ms is
    /// still accepted.
    @Test func bulkStoreWorkHasItsOwnDeadline() async throws {
        let redis = try await RedisServer.start()
        try await GatewayHarness.with({ policies in
            TaskTests.addRoutes(&policies)
            policies.setPlan("{}")  // no admission calls: only the task's own store work
            policies.useRedis(redis.url, onFailure: "deny")
            policies.files["gateway.yaml"] = policies.files["gateway.yaml"]!.replacingOccurrences(of: "max_request_body: 1MiB", with: "max_request_body: 11MiB")
        }) { gateway in
            let large = ByteBuffer(repeating: 0x5a, count: 10 << 20)
            let accepted = try await gateway.partner(.POST, "/v2/price-calculations?ms=1", body: .bytes(large))
            #expect(accepted.status == 202, "\(accepted.text)")
            let location = try #require(accepted.header("Location"))
            #expect(try await gateway.finishedTask(location, timeout: .seconds(30))["status"] as? String == "succeeded")

            redis.pause()
            let stalled = Task { try await gateway.acceptTask("/v2/price-calculations?ms=1") }
            try await Task.sleep(for: .milliseconds(300))  // the stall the accept meets
            redis.resume()
            let answer = try await stalled.value
            #expect(answer.status == 202, "\(answer.text)")
        }
        try await redis.stop()
    }

    /// The task body a keyed accept sends.
    private static let orderBody = #"{"part":"A-1"}"#

    /// Sends a keyed task's head and the start of its body, waits until its key is claimed in
    /// `redis`, stalls Redis (SIGSTOP) and sends the rest: the accept then waits for the store.
    /// Returns the connection; the caller resumes Redis.
    private static func acceptMeetingAStalledStore(_ gateway: GatewayHarness, redis: RedisServer, key: String) async throws -> RawConnection {
        let connection = try await RawConnection.open(port: gateway.addresses.http!)
        try await connection.send(
            "POST /v2/price-calculations?ms=1 HTTP/1.1\r\nHost: x\r\nX-API-Key: \(TestKeys.acme)\r\nIdempotency-Key: \(key)\r\n"
                + "Content-Type: application/json\r\nContent-Length: \(orderBody.utf8.count)\r\n\r\n" + orderBody.prefix(4)
        )
        let client = try RedisClient(url: try RedisURL.parse(redis.url).get(), timeout: .seconds(2), group: MultiThreadedEventLoopGroup.singleton)
        do {
            try await eventually("the key is claimed") {
                if case .string(let value) = try await client.send(["GET", "sluice:{p:acme}:idem:\(key)"]) { return value.first == UInt8(ascii: "C") }
                return false
            }
        } catch {
            await client.shutdown()
            throw error
        }
        await client.shutdown()
        redis.pause()
        try await connection.send(String(orderBody.dropFirst(4)))
        return connection
    }

    /// Retries the keyed accept until it is answered for good (`done`), then checks that one task
    /// exists and that it is the one the retry names.
    private static func expectOneTask(_ gateway: GatewayHarness, key: String, done: (TestResponse) -> Bool) async throws -> TestResponse {
        var retry = TestResponse(status: 0, headers: [:], body: ByteBuffer(), version: .http1_1)
        try await eventually("the retry is answered for good") {
            retry = try await gateway.partner(.POST, "/v2/price-calculations?ms=1", headers: [("Idempotency-Key", key)], body: .bytes(ByteBuffer(string: orderBody)))
            return done(retry)
        }
        let listed = try await gateway.send(.GET, gateway.admin + "/admin/tasks", key: TestKeys.viewerToken).json()["tasks"] as? [[String: Any]]
        #expect(listed?.count == 1, "one task, not two: \(listed ?? [])")
        #expect(listed?.first?["task_id"] as? String == (try retry.json()["task_id"] as? String))
        return retry
    }

    /// A keyed accept whose client goes away while the task is being stored: the task is
    /// stored and runs, and the key maps to it — a retry with the key replays its 202 (same
    /// task id) instead of making a second task.
    @Test func acceptRacingADisconnectKeepsTheKeyOnTheTask() async throws {
        let redis = try await RedisServer.start()
        try await GatewayHarness.with({ policies in
            TaskTests.addRoutes(&policies)
            policies.useRedis(redis.url, onFailure: "deny", timeout: "1s")
        }) { gateway in
            let connection = try await Self.acceptMeetingAStalledStore(gateway, redis: redis, key: "calc-42")
            try await Task.sleep(for: .milliseconds(300))  // the accept is on its way to the stalled Redis
            await connection.close()
            try await Task.sleep(for: .milliseconds(100))
            redis.resume()
            let retry = try await Self.expectOneTask(gateway, key: "calc-42") { $0.status != 409 }
            #expect(retry.status == 202)
            #expect(retry.header("Idempotent-Replayed") == "true", "the retry is the stored task's 202")
        }
        try await redis.stop()
    }

    /// A keyed accept whose store call times out (the store stalls past `store.bulk_timeout`)
    /// answers 503; the key stays on the accept until it is settled, and the partner's retry
    /// then gets the stored task's 202 or runs afresh: one task in the end, never two.
    @Test func timedOutKeyedAcceptIsSafeToRetry() async throws {
        let redis = try await RedisServer.start()
        try await GatewayHarness.with({ policies in
            TaskTests.addRoutes(&policies)
            policies.useRedis(redis.url, onFailure: "deny", timeout: "1s")
            policies.files["gateway.yaml"]! += "  bulk_timeout: 1s\n"
        }) { gateway in
            let connection = try await Self.acceptMeetingAStalledStore(gateway, redis: redis, key: "calc-7")
            let answer = try await connection.read(until: "request_id", timeout: .seconds(10))
            #expect(answer.hasPrefix("HTTP/1.1 503"), "the accept's deadline passed while the store stalled: \(answer.prefix(40))")
            redis.resume()
            await connection.close()
            _ = try await Self.expectOneTask(gateway, key: "calc-7") { $0.status == 202 }
        }
        try await redis.stop()
    }

    /// A task whose runs keep being lost (taken over after the lease) fails once
    /// `tasks.max_attempts` runs were lost, with the reason in its history and its webhook.
    @Test func taskThatLosesEveryRunFails() async throws {
        let database = try await TaskDatabase.url()
        let client = try RedisClient(url: try RedisURL.parse(database).get(), timeout: .seconds(2), group: MultiThreadedEventLoopGroup.singleton)
        let store = RedisStore(client: client)
        try await withWebhookReceiver { receiver, receiverPort in
            // A task that two dead instances ran in turn, the second still holding its queue entry.
            var record = TaskRecord(
                id: TaskID.random(), partner: "acme", version: "v2", route: "price",
                lifecycle: TaskLifecycle(acceptedAt: Int64(Date().timeIntervalSince1970 * 1_000), instance: "gone-1", requestID: "r-1")
            )
            let request = TaskRequest(method: "POST", upstream: "main", pathAndQuery: "/price?ms=1", headers: [], body: Data())
            #expect(try await store.acceptTask(record, request: request, retention: .seconds(3_600)))
            let claims = try await store.takeTasks(consumer: "gone-2", limit: 1, lease: .seconds(1))
            #expect(claims.map(\.task) == [record.id])
            let accepted = record.revision
            _ = record.lifecycle.start(at: record.lifecycle.updatedAt + 1, instance: "gone-1")
            _ = record.lifecycle.start(at: record.lifecycle.updatedAt + 1, instance: "gone-2")
            #expect(try await store.replaceTask(record, from: accepted, retention: .seconds(3_600)))

            try await GatewayHarness.with({ policies in
                Self.configure(redis: database, receiverPort: receiverPort)(&policies)
                policies.files["gateway.yaml"] = policies.files["gateway.yaml"]!.replacingOccurrences(
                    of: "tasks: { workers: 4, lease: 1s }", with: "tasks: { workers: 4, lease: 1s, max_attempts: 2 }"
                )
            }) { gateway in
                let document = try await gateway.finishedTask("/v2/tasks/\(record.id.text)")
                #expect(document["status"] as? String == "failed")
                #expect(Self.statuses(document) == ["queued", "running", "running", "failed"])
                let note = (document["history"] as? [[String: Any]])?.last?["note"] as? String
                #expect(note == TaskLifecycle.gaveUpNote(2))
                try await eventually("the failure's webhook is delivered") {
                    try receiver.deliveries.contains { try $0.id == Self.messageID(of: record.id.text) && $0.json()["type"] as? String == "task.failed" }
                }
            }
        }
        await client.shutdown()
    }

    /// An instance holding running tasks is killed with -9 while a second instance runs: the
    /// second takes each task over after the lease, runs it, and every webhook is delivered.
    @Test func killedInstanceTasksAreFinishedByTheOther() async throws {
        let database = try await TaskDatabase.url()
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-kill-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        // The doomed instance's upstream never answers, so its tasks are running when it dies.
        let stuck = RecordingUpstream()
        stuck.hold()
        var logger = Logger(label: "stuck")
        logger.logLevel = .critical
        try await withWebhookReceiver { receiver, receiverPort in
            try await withListeningService({ stuck.server(logger: logger, onListening: $0) }) { stuckPort in
                var policies = TestPolicies(
                    directory: root.appendingPathComponent("policies"), upstreamPort: stuckPort, pki: try TestPKI(directory: root.appendingPathComponent("pki"))
                )
                Self.configure(redis: database, receiverPort: receiverPort)(&policies)
                let (httpPort, adminPort) = try policies.listenOnFixedPorts()
                try policies.write()
                let doomed = try SluiceProcess.start(["serve", "--policies", policies.directory.path])
                let client = HTTPClient(eventLoopGroupProvider: .singleton)
                defer { doomed.signal(SIGKILL) }
                do {
                    try await eventually("the doomed instance is ready") {
                        let ready = try? await client.execute(HTTPClientRequest(url: "http://127.0.0.1:\(adminPort)/readyz"), timeout: .seconds(2))
                        return ready?.status == .ok
                    }
                    var tasks: [String] = []
                    for _ in 0..<3 {
                        var request = HTTPClientRequest(url: "http://127.0.0.1:\(httpPort)/v2/price-calculations?ms=1")
                        request.method = .POST
                        request.headers.add(name: "X-API-Key", value: TestKeys.acme)
                        request.body = .bytes(ByteBuffer(string: #"{"part":"A-1"}"#))
                        let response = try await client.execute(request, timeout: .seconds(5))
                        #expect(response.status == .accepted)
                        let body = try JSONSerialization.jsonObject(with: Data(buffer: try await response.body.collect(upTo: 4_096))) as? [String: Any]
                        tasks.append(try #require(body?["task_id"] as? String))
                    }
                    try await eventually("the doomed instance runs all three") { stuck.heldCount == 3 }

                    try await GatewayHarness.with(Self.configure(redis: database, receiverPort: receiverPort)) { survivor in
                        doomed.signal(SIGKILL)
                        #expect(try await doomed.exitCode() != 0)
                        for task in tasks {
                            let document = try await survivor.finishedTask("/v2/tasks/\(task)")
                            #expect(document["status"] as? String == "succeeded")
                            #expect(Self.statuses(document) == ["queued", "running", "running", "succeeded"])
                            let takeover = (document["history"] as? [[String: Any]])?[2]["note"] as? String ?? ""
                            #expect(takeover.hasPrefix("taken over from"), "\(takeover)")
                        }
                        try await eventually("every webhook is delivered") {
                            Set(receiver.deliveries.map(\.id)).isSuperset(of: tasks.map(Self.messageID(of:)))
                        }
                        #expect(receiver.deliveries.allSatisfy { $0.verified })
                    }
                } catch {
                    stuck.release()
                    try? await client.shutdown()
                    throw error
                }
                // Its held calls end only when answered, even with their client gone.
                stuck.release()
                try await client.shutdown()
            }
        }
    }

    /// A graceful shutdown lets running tasks run until half the drain time, then hands them
    /// back to the queue; the next instance runs them to the end. (A drain time of 2 s: with
    /// 600 ms, a starved machine could not hand them back in the 300 ms left, and the next
    /// instance took them over when their leases ran out instead.)
    @Test func gracefulShutdownHandsRunningTasksBack() async throws {
        let database = try await TaskDatabase.url()
        let stuck = RecordingUpstream()
        stuck.hold()
        var logger = Logger(label: "stuck")
        logger.logLevel = .critical
        var tasks: [String] = []
        try await withListeningService({ stuck.server(logger: logger, onListening: $0) }) { stuckPort in
            let configure = Self.configure(redis: database)
            try await GatewayHarness.with({ policies in
                configure(&policies)
                policies.upstreams["main"] = "url: http://127.0.0.1:\(stuckPort)\n"
            }, shutdownTimeout: .seconds(2)) { first in
                for _ in 0..<2 {
                    tasks.append(try #require(try await first.acceptTask("/v2/price-calculations?ms=1").json()["task_id"] as? String))
                }
                try await eventually("both tasks run") { stuck.heldCount == 2 }
            }
            // The held calls end only when answered, even with the gateway gone.
            stuck.release()
        }
        try await GatewayHarness.with(Self.configure(redis: database)) { next in
            for task in tasks {
                let document = try await next.finishedTask("/v2/tasks/\(task)")
                #expect(Self.statuses(document) == ["queued", "running", "queued", "running", "succeeded"])
                #expect((document["history"] as? [[String: Any]])?[2]["note"] as? String == "handed back at shutdown")
            }
        }
        #expect(stuck.startedCount == 2)
    }
}
