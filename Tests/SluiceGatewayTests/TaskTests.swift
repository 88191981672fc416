import AsyncHTTPClient
import Foundation
import NIOCore
import SluiceCore
import TestSupport
import Testing

/// Async tasks on the partner path (SPEC §3, issue 12), over real sockets: 202 and polling,
/// `Prefer: respond-async`, owner-only reads, cancel, idempotent accept, two instances on Redis.
@Suite(.serialized)
struct TaskTests {
    static func addRoutes(_ policies: inout TestPolicies) {
        policies.addRoutes(
            "{ id: price, versions: [v2], method: POST, path: /price-calculations, upstream: main, upstream_path: /price, async: always, request_timeout: 30m }",
            "{ id: quote, versions: [v2], method: POST, path: /quotes, upstream: main, upstream_path: /price, async: on-request }"
        )
    }

    /// An `async: always` route answers 202 at once with where to poll; a worker runs the task
    /// against the upstream with `Idempotency-Key: <task id>` and the accepting request's id; the
    /// status document then has the result and the history — on the embedded store and on Redis.
    @Test(arguments: [false, true])
    func acceptedTaskRunsAndIsPolled(onRedis: Bool) async throws {
        let url = onRedis ? try await TaskDatabase.url() : nil
        try await GatewayHarness.with({ policies in
            Self.addRoutes(&policies)
            if let url { policies.useRedis(url, timeout: "2s") }
        }) { (gateway: GatewayHarness) async throws in
            let accepted = try await gateway.acceptTask("/v2/price-calculations?ms=20", headers: [("X-Request-Id", "order-4711")])
            #expect(accepted.status == 202)
            let body = try accepted.json()
            let id = try #require(body["task_id"] as? String)
            #expect(TaskID(id) != nil)
            #expect(body["status"] as? String == "queued")
            #expect(body["status_url"] as? String == "/v2/tasks/\(id)")
            #expect(body["created_at"] as? String != nil)
            #expect(accepted.header("Location") == "/v2/tasks/\(id)")
            #expect(accepted.header("Retry-After") == "30")
            #expect(accepted.header("Content-Type") == "application/json")
            #expect(accepted.header("RateLimit") != nil)

            let document = try await gateway.finishedTask("/v2/tasks/\(id)")
            #expect(document["status"] as? String == "succeeded")
            #expect(document["attempts"] as? Int == 1)
            let history = try #require(document["history"] as? [[String: Any]])
            #expect(history.map { $0["status"] as? String } == ["queued", "running", "succeeded"])
            #expect(history.allSatisfy { $0["request_id"] as? String == "order-4711" })
            let result = try #require(document["result"] as? [String: Any])
            #expect(result["status"] as? Int == 200)
            let price = try #require(result["body"] as? [String: Any])
            #expect(price["idempotency_key"] as? String == id)
            #expect(price["currency"] as? String == "EUR")
        }
    }

    /// An `on-request` route is synchronous unless the partner prefers `respond-async`; then 202 with `Preference-Applied`.
    @Test func onRequestRouteHonoursPrefer() async throws {
        try await GatewayHarness.with(Self.addRoutes) { gateway in
            let sync = try await gateway.acceptTask("/v2/quotes?ms=1")
            #expect(sync.status == 200)
            #expect(try sync.json()["currency"] as? String == "EUR")
            let async = try await gateway.acceptTask("/v2/quotes?ms=1", headers: [("Prefer", "wait=10, Respond-Async")])
            #expect(async.status == 202)
            #expect(async.header("Preference-Applied") == "respond-async")
            let id = try #require(try async.json()["task_id"] as? String)
            #expect(try await gateway.finishedTask("/v2/tasks/\(id)")["status"] as? String == "succeeded")
        }
    }

    /// Polls and cancels go through admission like any request: they take a rate token (cost 1)
    /// and answer 429 `rate-limited` past the bucket, with RateLimit headers, on both stores;
    /// they take no quota, so a partner whose quota is used up still reads its results.
    @Test(arguments: [false, true])
    func taskPollsAreRateLimitedButTakeNoQuota(onRedis: Bool) async throws {
        let redis = onRedis ? try await RedisServer.start() : nil
        let clock = ManualClock(.present)
        try await GatewayHarness.with({ policies in
            Self.addRoutes(&policies)
            policies.setPlan("{ rate: { per_second: 0.01, burst: 4 }, quota: { requests: 1, per: day } }")
            if let redis { policies.useRedis(redis.url, onFailure: "deny", timeout: "2s") }
        }, clock: clock) { gateway in
            let accepted = try await gateway.acceptTask("/v2/price-calculations?ms=1")
            #expect(accepted.status == 202)
            let location = try #require(accepted.header("Location"))
            // The quota (1 a day) is used up: new work is refused, polls are not.
            #expect(try await gateway.acceptTask("/v2/price-calculations?ms=1").status == 429)
            var statuses: [Int] = []
            for _ in 0..<30 {
                let poll = try await gateway.partner(.GET, location)
                statuses.append(poll.status)
                #expect(poll.header("RateLimit") != nil)
                if poll.status == 429 {
                    #expect(try poll.json()["type"] as? String == "urn:sluice:problem:rate-limited")
                    #expect(poll.header("Retry-After") != nil)
                }
            }
            #expect(statuses.filter { $0 == 200 }.count == 3, "the accept took one of the bucket's 4 tokens: \(statuses)")
            #expect(statuses.filter { $0 == 429 }.count == 27)
            #expect(try await gateway.partner(.DELETE, location).status == 429)
        }
        try await redis?.stop()
    }

    /// Only the owner sees its task: another partner, an unknown id and a malformed one get 404; other methods 405; no key 401.
    @Test func tasksAreOwnerOnly() async throws {
        try await GatewayHarness.with(Self.addRoutes) { gateway in
            let id = try #require(try await gateway.acceptTask("/v2/price-calculations?ms=1").json()["task_id"] as? String)
            try expectProblem(try await gateway.partner(.GET, "/v2/tasks/\(id)", key: TestKeys.globex), 404, "not-found", path: "/v2/tasks/\(id)")
            try expectProblem(try await gateway.partner(.DELETE, "/v2/tasks/\(id)", key: TestKeys.globex), 404, "not-found", path: "/v2/tasks/\(id)")
            let unknown = TaskID.random().text
            try expectProblem(try await gateway.partner(.GET, "/v2/tasks/\(unknown)"), 404, "not-found", path: "/v2/tasks/\(unknown)")
            let malformed = "/v2/tasks/tsk_%2e%2e" + String(repeating: "x", count: 3_000)
            #expect(try await gateway.partner(.GET, malformed).status == 404)
            // An encoded '/' is refused before the path is looked at (SPEC §3 Path parameters).
            #expect(try await gateway.partner(.GET, "/v2/tasks/tsk_%2e%2e%2f").status == 400)
            let wrongMethod = try await gateway.partner(.PUT, "/v2/tasks/\(id)")
            try expectProblem(wrongMethod, 405, "method-not-allowed", path: "/v2/tasks/\(id)")
            #expect(wrongMethod.header("Allow") == "GET, DELETE")
            #expect(try await gateway.partner(.GET, "/v2/tasks/\(id)", key: nil).status == 401)
            #expect(try await gateway.partner(.GET, "/v2/tasks/\(id)").status == 200)
        }
    }

    /// With the one worker held at the upstream, a queued task is cancelled and never reaches
    /// the upstream; cancelling the running task, or a finished one, is 409. The task gauges
    /// and the phase durations follow.
    @Test func queuedTaskIsCancelledRunningOneConflicts() async throws {
        let recorder = RecordingUpstream()
        recorder.hold()
        try await withRecordingUpstream(recorder, as: "held", { policies in
            Self.addRoutes(&policies)
            policies.addRoutes("{ id: held-task, versions: [v2], method: POST, path: /held-tasks, upstream: held, async: always }")
            policies.files["gateway.yaml"]! += "tasks: { workers: 1 }\n"
        }) { (gateway: GatewayHarness) async throws in
            let busy = try #require(try await gateway.acceptTask("/v2/held-tasks").json()["task_id"] as? String)
            try await eventually("the first task is at the upstream") { recorder.heldCount == 1 }
            #expect(try await gateway.partner(.GET, "/v2/tasks/\(busy)").json()["status"] as? String == "running")
            let waiting = try #require(try await gateway.acceptTask("/v2/held-tasks").json()["task_id"] as? String)
            try await eventually("the gauges show one task running and one waiting") {
                let running = try await gateway.metric(#"sluice_tasks{status="running"}"#)
                let queued = try await gateway.metric(#"sluice_tasks{status="queued"}"#)
                let oldest = try await gateway.metric("sluice_task_queue_oldest_seconds") ?? 0
                return running == 1 && queued == 1 && oldest > 0
            }
            let cancelled = try await gateway.partner(.DELETE, "/v2/tasks/\(waiting)")
            #expect(cancelled.status == 200)
            #expect(try cancelled.json()["status"] as? String == "cancelled")
            try expectProblem(try await gateway.partner(.DELETE, "/v2/tasks/\(busy)"), 409, "task-not-cancellable", path: "/v2/tasks/\(busy)")
            recorder.release()
            #expect(try await gateway.finishedTask("/v2/tasks/\(busy)")["status"] as? String == "succeeded")
            let final = try await gateway.partner(.GET, "/v2/tasks/\(waiting)").json()
            #expect((final["history"] as? [[String: Any]])?.map { $0["status"] as? String } == ["queued", "cancelled"])
            #expect(final["result"] == nil)
            #expect(recorder.startedCount == 1)
            try await eventually("the gauges show the finished tasks") {
                let succeeded = try await gateway.metric(#"sluice_tasks{status="succeeded"}"#)
                let cancelled = try await gateway.metric(#"sluice_tasks{status="cancelled"}"#)
                let queued = try await gateway.metric(#"sluice_tasks{status="queued"}"#)
                let oldest = try await gateway.metric("sluice_task_queue_oldest_seconds")
                return succeeded == 1 && cancelled == 1 && queued == 0 && oldest == 0
            }
            #expect(try await gateway.metric(#"sluice_task_duration_seconds_count{route="held-task",phase="queued"}"#) == 1)
            #expect(try await gateway.metric(#"sluice_task_duration_seconds_count{route="held-task",phase="running"}"#) == 1)
            try expectProblem(try await gateway.partner(.DELETE, "/v2/tasks/\(waiting)"), 409, "task-not-cancellable", path: "/v2/tasks/\(waiting)")
            // Event lines for the transitions: running, succeeded, cancelled.
            let events = try gateway.logLines().filter { ($0["message"] as? String)?.hasPrefix("task ") == true }
            #expect(events.contains { $0["message"] as? String == "task cancelled" && $0["task"] as? String == waiting && $0["trace_id"] != nil })
            #expect(events.contains { $0["message"] as? String == "task running" && $0["task"] as? String == busy })
            #expect(events.contains { $0["message"] as? String == "task succeeded" && $0["task"] as? String == busy && $0["route"] as? String == "held-task" })
        }
    }

    /// The same Idempotency-Key returns the same task (the 202 is replayed); no second task is made.
    @Test func sameKeyReturnsTheSameTask() async throws {
        try await GatewayHarness.with(Self.addRoutes) { gateway in
            let first = try await gateway.acceptTask("/v2/price-calculations?ms=1", headers: [("Idempotency-Key", "quote-88")])
            let second = try await gateway.acceptTask("/v2/price-calculations?ms=1", headers: [("Idempotency-Key", "quote-88")])
            #expect(first.status == 202 && second.status == 202)
            #expect(second.header("Idempotent-Replayed") == "true")
            #expect(try second.json()["task_id"] as? String == (try first.json()["task_id"] as? String))
            #expect(second.header("Location") == first.header("Location"))
        }
    }

    /// The whole body reaches the upstream however it arrived — also when it came while the
    /// request still waited for admission (a Redis round trip) and was held: as a task's
    /// request, and as the kept body of a PUT or keyed POST (which a retry may send again).
    @Test(arguments: [false, true])
    func bodiesHeldDuringAdmissionReachTheUpstream(onRedis: Bool) async throws {
        let url = onRedis ? try await TaskDatabase.url() : nil
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder, settings: "retries: { attempts: 1 }", { policies in
            Self.addRoutes(&policies)
            policies.addRoutes("{ id: put-order, versions: [v2], method: PUT, path: \"/orders/{id}\", upstream: main }")
            if let url { policies.useRedis(url, timeout: "2s") }
        }) { gateway in
            let body = String(repeating: "x", count: 1_000)
            for index in 0..<4 {
                #expect(try await gateway.partner(.PUT, "/v2/orders/\(index)", body: .bytes(ByteBuffer(string: body))).status == 200)
            }
            var ids: [String] = []
            for index in 0..<4 {
                let accepted = try await gateway.partner(.POST, "/v2/price-calculations?n=\(index)", body: .bytes(ByteBuffer(string: body)))
                ids.append(try #require(try accepted.json()["task_id"] as? String))
            }
            for id in ids { _ = try await gateway.finishedTask("/v2/tasks/\(id)") }
            for index in 0..<4 {
                let keyed = try await gateway.partner(.POST, "/v2/orders", headers: [("Idempotency-Key", "held-\(index)")], body: .bytes(ByteBuffer(string: body)))
                #expect(keyed.status == 200)
            }
            #expect(recorder.requests.count == 12)
            #expect(recorder.requests.map(\.bytes) == Array(repeating: 1_000, count: 12))
        }
    }

    /// Two instances on Redis: a task accepted by one is read (and cancelled or finished) through the other.
    @Test func otherInstanceSeesTheTask() async throws {
        let url = try await TaskDatabase.url()
        let configure: (inout TestPolicies) -> Void = { policies in
            Self.addRoutes(&policies)
            policies.useRedis(url, timeout: "2s")
        }
        try await GatewayHarness.with(configure) { first in
            try await GatewayHarness.with(configure) { second in
                let id = try #require(try await first.acceptTask("/v2/price-calculations?ms=5").json()["task_id"] as? String)
                #expect(try await second.finishedTask("/v2/tasks/\(id)")["status"] as? String == "succeeded")
            }
        }
    }
}
