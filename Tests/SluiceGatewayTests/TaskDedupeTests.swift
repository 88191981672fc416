import AsyncHTTPClient
import Foundation
import NIOCore
import TestSupport
import Testing

/// Deduplicated async requests (SPEC §9 Dedupe, issue 27), over real sockets: identical price
/// calculations while the first runs, and after it succeeded, get its task; two instances on
/// Redis agree; another body is another task; a failed task is not reused.
@Suite(.serialized)
struct TaskDedupeTests {
    private static let route =
        "{ id: price, versions: [v2], method: POST, path: /price-calculations, upstream: main, upstream_path: /price, async: always, dedupe: 1h }"

    /// Gateways (one, or two sharing a Redis database) in front of `recorder`, with the route.
    private func withGateways(
        _ count: Int, onRedis: Bool, _ recorder: RecordingUpstream, _ body: ([GatewayHarness]) async throws -> Void
    ) async throws {
        try await SluiceGatewayTests.withGateways(count, onRedis: onRedis, in: recorder, routes: [Self.route], body)
    }

    private func order(_ part: String) -> HTTPClientRequest.Body {
        .bytes(ByteBuffer(string: "{\"part\":\"\(part)\",\"model\":\"bracket.step\"}"))
    }

    private func post(_ gateway: GatewayHarness, _ part: String = "A-1", query: String = "?model=7") async throws -> TestResponse {
        try await gateway.partner(.POST, "/v2/price-calculations" + query, body: order(part))
    }

    private func taskID(_ response: TestResponse) throws -> String {
        try #require(try response.json()["task_id"] as? String)
    }

    /// 20 identical requests racing over two instances make one task and one upstream call; a
    /// duplicate of the running task says `running`; once it succeeded, an identical request
    /// gets the finished task (202, `succeeded`, where to read the result); another body or
    /// query is a task of its own; every duplicate is counted.
    @Test func racingIdenticalRequestsOnTwoInstancesMakeOneTask() async throws {
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{\"price\":12.5}")
        recorder.hold()
        try await withGateways(2, onRedis: true, recorder) { gateways in
            let answers = try await withThrowingTaskGroup(of: TestResponse.self) { group in
                for index in 0..<20 { group.addTask { try await post(gateways[index % 2]) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(answers.allSatisfy { $0.status == 202 })
            let ids = Set(try answers.map(taskID))
            try #require(ids.count == 1)
            let id = try #require(ids.first)
            #expect(answers.allSatisfy { $0.header("Location") == "/v2/tasks/\(id)" })

            try await eventually("the task runs") { recorder.startedCount == 1 }
            let whileRunning = try await post(gateways[1])
            #expect(try taskID(whileRunning) == id)
            #expect(try whileRunning.json()["status"] as? String == "running")

            recorder.release()
            #expect(try await gateways[0].finishedTask("/v2/tasks/\(id)")["status"] as? String == "succeeded")
            let afterwards = try await post(gateways[0])
            #expect(afterwards.status == 202)
            #expect(try taskID(afterwards) == id)
            #expect(try afterwards.json()["status"] as? String == "succeeded")
            #expect(afterwards.header("Location") == "/v2/tasks/\(id)")
            #expect(recorder.startedCount == 1, "one upstream call for all of them")

            let otherBody = try taskID(try await post(gateways[1], "A-2"))
            let otherQuery = try taskID(try await post(gateways[0], query: "?model=8"))
            #expect(Set([id, otherBody, otherQuery]).count == 3)
            try await eventually("the other tasks ran") { recorder.startedCount == 3 }

            var counted = 0.0
            for gateway in gateways { counted += try await gateway.metric("sluice_tasks_deduplicated_total{route=\"price\"}") ?? 0 }
            #expect(counted == 21)
        }
    }

    /// A failed task is not reused: the identical request after it is a new task (and a new
    /// upstream call); another partner's identical request is never the first partner's task.
    @Test(arguments: [false, true])
    func failedTasksAndOtherPartnersGetTasksOfTheirOwn(onRedis: Bool) async throws {
        let recorder = RecordingUpstream()
        recorder.reply(503)
        try await withGateways(1, onRedis: onRedis, recorder) { gateways in
            let gateway = gateways[0]
            let first = try taskID(try await post(gateway))
            #expect(try await gateway.finishedTask("/v2/tasks/\(first)", timeout: .seconds(30))["status"] as? String == "failed")
            recorder.reply(200, body: "{\"price\":12.5}")
            let second = try taskID(try await post(gateway))
            #expect(second != first)
            #expect(try await gateway.finishedTask("/v2/tasks/\(second)")["status"] as? String == "succeeded")
            #expect(try taskID(try await post(gateway)) == second)

            let globex = try await gateway.partner(.POST, "/v2/price-calculations?model=7", key: TestKeys.globex, body: order("A-1"))
            #expect(globex.status == 202)
            #expect(try taskID(globex) != second)
        }
    }

    /// The partner's own `Idempotency-Key` is decided first: a replay returns the key's answer,
    /// and a new key on an identical request gets the running task.
    @Test func idempotencyKeyIsDecidedFirst() async throws {
        let recorder = RecordingUpstream()
        recorder.reply(200, body: "{}")
        recorder.hold()
        try await withGateways(1, onRedis: false, recorder) { gateways in
            let gateway = gateways[0]
            let keyed = try await gateway.partner(.POST, "/v2/price-calculations?model=7", headers: [("Idempotency-Key", "q-1")], body: order("A-1"))
            let id = try taskID(keyed)
            let replay = try await gateway.partner(.POST, "/v2/price-calculations?model=7", headers: [("Idempotency-Key", "q-1")], body: order("A-1"))
            #expect(replay.header("Idempotent-Replayed") == "true")
            #expect(try taskID(replay) == id)
            let otherKey = try await gateway.partner(.POST, "/v2/price-calculations?model=7", headers: [("Idempotency-Key", "q-2")], body: order("A-1"))
            #expect(otherKey.status == 202 && otherKey.header("Idempotent-Replayed") == nil)
            #expect(try taskID(otherKey) == id)
            recorder.release()
            #expect(try await gateway.finishedTask("/v2/tasks/\(id)")["status"] as? String == "succeeded")
            #expect(recorder.startedCount == 1)
        }
    }
}
