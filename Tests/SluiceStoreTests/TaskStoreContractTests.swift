import Foundation
import NIOCore
import SluiceCore
@testable import SluiceStore
import Testing
import TestSupport

/// Every store keeps the same task contract; each test runs against the embedded store and real
/// Redis (the clock-dependent ones with the manual clock in the past, present and future).
struct TaskStoreContractTests {
    private let retention: Duration = .seconds(7 * 86_400)

    private func newTask(_ clock: ManualClock, partner: String = "acme", route: String = "price", request id: String = "req-1") -> (TaskRecord, TaskRequest) {
        let record = TaskRecord(
            id: TaskID.random(), partner: partner, version: "v2", route: route,
            lifecycle: TaskLifecycle(acceptedAt: clock.now, instance: "gw-a", requestID: id), traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        )
        let request = TaskRequest(
            method: "POST", upstream: "pricing", pathAndQuery: "/price?model=a%20b", headers: [.init("Content-Type", "application/json")],
            body: Data([0, 1, 2, 255] + Array("{\"part\":\"A-1\"}".utf8))
        )
        return (record, request)
    }

    /// Accepts `count` new tasks (their ids spread over the shards) and returns their ids.
    private func acceptTasks(_ count: Int, into store: any StoreUnderTest, _ clock: ManualClock) async throws -> Set<TaskID> {
        var accepted: Set<TaskID> = []
        for _ in 0..<count {
            let (record, request) = newTask(clock)
            #expect(try await store.acceptTask(record, request: request, retention: retention))
            accepted.insert(record.id)
        }
        return accepted
    }

    /// Starts a stored task (as worker gw-b would) and returns it as it now stands.
    private func start(_ task: TaskRecord, in store: any StoreUnderTest, _ clock: ManualClock) async throws -> TaskRecord {
        var running = task
        _ = running.lifecycle.start(at: clock.now, instance: "gw-b")
        #expect(try await store.replaceTask(running, from: task.revision, retention: retention))
        return running
    }

    /// An accepted task can be read, its request fetched, and it is taken from the queue once; an id is accepted only once.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func acceptedTaskIsReadAndTakenOnce(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let (record, request) = newTask(clock)
            #expect(try await store.acceptTask(record, request: request, retention: retention))
            #expect(try await store.acceptTask(record, request: request, retention: retention) == false)
            #expect(try await store.task(record.id) == record)
            #expect(try await store.taskRequest(record.id) == request)
            let claims = try await store.takeTasks(consumer: "w1", limit: 16, lease: .seconds(30))
            #expect(claims.map(\.task) == [record.id])
            #expect(claims.first?.takenOver == false)
            #expect(try await store.takeTasks(consumer: "w2", limit: 16, lease: .seconds(30)).isEmpty)
            #expect(try await store.task(TaskID.random()) == nil)
        }
    }

    /// Replacing is compare and set on the revision; a finished task's request is dropped.
    @Test(arguments: StoreKind.allCases)
    func replaceIsCompareAndSet(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let (queued, request) = newTask(clock)
            #expect(try await store.acceptTask(queued, request: request, retention: retention))
            var running = queued
            _ = running.lifecycle.start(at: clock.now, instance: "gw-b")
            var other = queued
            _ = other.lifecycle.cancel(at: clock.now, instance: "gw-c")
            #expect(try await store.replaceTask(running, from: queued.revision, retention: retention))
            #expect(try await store.replaceTask(other, from: queued.revision, retention: retention) == false)
            #expect(try await store.task(queued.id) == running)
            #expect(try await store.taskRequest(queued.id) == request)
            var finished = running
            _ = finished.lifecycle.finish(succeeded: true, at: clock.now + 5, instance: "gw-b")
            finished.result = TaskResult(status: 200, headers: [.init("Content-Type", "application/json")], body: Data("{\"price\":12.5}".utf8))
            #expect(try await store.replaceTask(finished, from: running.revision, retention: retention))
            #expect(try await store.task(queued.id) == finished)
            #expect(try await store.taskRequest(queued.id) == nil)
            #expect(try await store.replaceTask(finished, from: 1, retention: retention) == false)
        }
    }

    /// A finished task's result is read only when asked for: reads for a status (a cancel, a
    /// worker) and listings leave it out, however large it is; a poll gets it.
    @Test(arguments: StoreKind.allCases)
    func resultsAreReadOnlyWhenAskedFor(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let (queued, request) = newTask(clock)
            #expect(try await store.acceptTask(queued, request: request, retention: retention))
            let running = try await start(queued, in: store, clock)
            #expect(try await store.task(queued.id, .statusAndResult) == running, "an unfinished task has no result to read")
            var finished = running
            _ = finished.lifecycle.finish(succeeded: true, at: clock.now + 5, instance: "gw-b")
            finished.result = TaskResult(status: 200, headers: [], body: Data(repeating: 7, count: 2 << 20))
            #expect(try await store.replaceTask(finished, from: running.revision, retention: retention))
            #expect(try await store.task(queued.id, .statusAndResult) == finished)
            let status = try #require(try await store.task(queued.id, .status))
            #expect(status.result == nil && status.lifecycle == finished.lifecycle)
            let listed = try await store.listTasks(status: nil, partner: "acme", limit: 10)
            #expect(listed.map(\.id) == [queued.id] && listed.allSatisfy { $0.result == nil })
        }
    }

    /// A lost accept is settled: a stored task is found (or, asked to withdraw, taken back while
    /// nothing touched it; kept once it has moved on), and an id that was never stored is voided
    /// so that the accept, should it still arrive, is refused.
    @Test(arguments: StoreKind.allCases)
    func lostAcceptsAreSettled(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let (stored, request) = newTask(clock)
            #expect(try await store.acceptTask(stored, request: request, retention: retention))
            #expect(try await store.resolveAccept(stored.id, withdraw: false) == .stored)
            #expect(try await store.task(stored.id) == stored)

            let (never, _) = newTask(clock)
            #expect(try await store.resolveAccept(never.id, withdraw: false) == .voided)
            #expect(try await store.acceptTask(never, request: request, retention: retention) == false, "a late accept of a voided id")
            #expect(try await store.task(never.id) == nil)
            #expect(try await store.resolveAccept(never.id, withdraw: true) == .voided)

            let (untouched, _) = newTask(clock)
            #expect(try await store.acceptTask(untouched, request: request, retention: retention))
            #expect(try await store.resolveAccept(untouched.id, withdraw: true) == .withdrawn)
            #expect(try await store.task(untouched.id) == nil)
            #expect(try await store.listTasks(status: nil, partner: "acme", limit: 10).map(\.id) == [stored.id])

            let (started, _) = newTask(clock)
            #expect(try await store.acceptTask(started, request: request, retention: retention))
            let running = try await start(started, in: store, clock)
            #expect(try await store.resolveAccept(started.id, withdraw: true) == .moved)
            #expect(try await store.task(started.id) == running)
        }
    }

    /// Consumers taking at once never get the same task twice, and together get every task.
    @Test(arguments: StoreKind.allCases)
    func concurrentConsumersShareTheQueue(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let accepted = try await acceptTasks(40, into: store, clock)
            let taken = try await withThrowingTaskGroup(of: [TaskID].self) { group in
                for consumer in 0..<4 {
                    group.addTask {
                        var mine: [TaskID] = []
                        while true {
                            let claims = try await store.takeTasks(consumer: "w\(consumer)", limit: 3, lease: .seconds(30))
                            mine += claims.map(\.task)
                            if claims.isEmpty, try await store.takeTasks(consumer: "w\(consumer)", limit: 16, lease: .seconds(30)).isEmpty { return mine }
                        }
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            #expect(taken.count == 40)
            #expect(Set(taken) == accepted)
        }
    }

    /// An entry renewed within the lease stays with its holder; one not renewed for a lease is
    /// taken over, and its old holder can then neither renew nor requeue it.
    @Test(arguments: StoreKind.allCases)
    func expiredLeaseIsTakenOver(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let (record, request) = newTask(clock)
            #expect(try await store.acceptTask(record, request: request, retention: retention))
            let held = try await store.takeTasks(consumer: "dying", limit: 1, lease: .seconds(30))
            try #require(held.map(\.task) == [record.id])
            #expect(try await store.renewTasks(held, consumer: "dying") == held)
            #expect(try await store.takeTasks(consumer: "other", limit: 1, lease: .seconds(30)).isEmpty)
            // The holder stops renewing. A short lease stands for the time passing: the embedded
            // store measures it by the manual clock, Redis by its own (the entry's idle time).
            let lease: Duration = .milliseconds(300)
            clock.advance(lease.milliseconds)
            var takeover: [TaskClaim] = []
            try await eventually("the other consumer takes the task over") {
                takeover = try await store.takeTasks(consumer: "other", limit: 1, lease: lease)
                return !takeover.isEmpty
            }
            try #require(takeover.map(\.task) == [record.id])
            #expect(takeover.first?.takenOver == true)
            #expect(try await store.renewTasks(held, consumer: "dying").isEmpty)
            try await store.requeue(held[0], consumer: "dying")
            #expect(try await store.renewTasks(takeover, consumer: "other") == takeover)
            try await store.completeEntry(takeover[0])
            #expect(try await store.takeTasks(consumer: "third", limit: 16, lease: .seconds(30)).isEmpty)
        }
    }

    /// A requeued entry goes back to the queue for the next consumer; a completed one is gone for good.
    @Test(arguments: StoreKind.allCases)
    func requeuedTaskIsTakenAgain(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let (record, request) = newTask(clock)
            #expect(try await store.acceptTask(record, request: request, retention: retention))
            let first = try await store.takeTasks(consumer: "leaving", limit: 1, lease: .seconds(30))
            try #require(first.count == 1)
            try await store.requeue(first[0], consumer: "leaving")
            let second = try await store.takeTasks(consumer: "staying", limit: 1, lease: .seconds(30))
            try #require(second.map(\.task) == [record.id])
            #expect(second.first?.takenOver == false)
            try await store.completeEntry(second[0])
            clock.advance(60_000)
            #expect(try await store.takeTasks(consumer: "late", limit: 16, lease: .seconds(30)).isEmpty)
        }
    }

    /// Listing gives the newest tasks first, filtered by status and partner, at most the limit.
    @Test(arguments: StoreKind.allCases)
    func listsNewestFirstWithFilters(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            var acme: [TaskRecord] = []
            for index in 0..<4 {
                let (record, request) = newTask(clock, partner: index == 2 ? "globex" : "acme")
                #expect(try await store.acceptTask(record, request: request, retention: retention))
                if index != 2 { acme.append(record) }
                clock.advance(1_000)
            }
            var cancelled = acme[2]
            _ = cancelled.lifecycle.cancel(at: clock.now, instance: "gw-a")
            #expect(try await store.replaceTask(cancelled, from: acme[2].revision, retention: retention))
            #expect(try await store.listTasks(status: nil, partner: "acme", limit: 10).map(\.id) == [cancelled.id, acme[1].id, acme[0].id])
            #expect(try await store.listTasks(status: .queued, partner: "acme", limit: 1).map(\.id) == [acme[1].id])
            #expect(try await store.listTasks(status: .cancelled, partner: nil, limit: 10) == [cancelled])
            #expect(try await store.listTasks(status: .running, partner: nil, limit: 10).isEmpty)
        }
    }

    /// The census counts tasks per status as they move, names the longest-waiting queued task's
    /// queue time (a hand-back queues a task anew), and forgets tasks past the retention.
    @Test(arguments: StoreKind.allCases)
    func censusCountsTasksByStatus(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            #expect(try await store.taskCensus(retention: retention) == TaskCensus())
            var tasks: [TaskRecord] = []
            for _ in 0..<4 {
                let (record, request) = newTask(clock)
                #expect(try await store.acceptTask(record, request: request, retention: retention))
                tasks.append(record)
                clock.advance(1_000)
            }
            let firstAccepted = tasks[0].lifecycle.createdAt
            let running = try await start(tasks[0], in: store, clock)
            var succeeded = tasks[1]
            _ = succeeded.lifecycle.start(at: clock.now, instance: "gw-b")
            _ = succeeded.lifecycle.finish(succeeded: true, at: clock.now, instance: "gw-b")
            #expect(try await store.replaceTask(succeeded, from: tasks[1].revision, retention: retention))
            var cancelled = tasks[2]
            _ = cancelled.lifecycle.cancel(at: clock.now, instance: "gw-a")
            #expect(try await store.replaceTask(cancelled, from: tasks[2].revision, retention: retention))
            let census = try await store.taskCensus(retention: retention)
            #expect(census.counts == [.queued: 1, .running: 1, .succeeded: 1, .failed: 0, .cancelled: 1])
            #expect(census.oldestQueuedAt == tasks[3].lifecycle.createdAt)
            #expect(census.oldestQueuedAt != firstAccepted)
            #expect(census.oldestQueuedAtByRoute == ["price": tasks[3].lifecycle.createdAt])

            clock.advance(1_000)
            var handedBack = running
            _ = handedBack.lifecycle.handBack(at: clock.now, instance: "gw-b")
            #expect(try await store.replaceTask(handedBack, from: running.revision, retention: retention))
            let after = try await store.taskCensus(retention: retention)
            #expect(after.counts[.queued] == 2 && after.counts[.running] == 0)
            #expect(after.oldestQueuedAt == tasks[3].lifecycle.createdAt)
            let (quote, quoteRequest) = newTask(clock, route: "quote")
            #expect(try await store.acceptTask(quote, request: quoteRequest, retention: retention))
            let byRoute = try await store.taskCensus(retention: retention).oldestQueuedAtByRoute
            #expect(byRoute == ["price": tasks[3].lifecycle.createdAt, "quote": quote.lifecycle.createdAt], "each route its own oldest")

            clock.advance(retention.milliseconds + 1)
            #expect(try await store.taskCensus(retention: retention) == TaskCensus())
        }
    }

    /// A task for `dedupe`, its id minted by the store (a deduplicated task lives beside its fingerprint).
    private func dedupedTask(_ store: any StoreUnderTest, _ dedupe: TaskDedupe, _ clock: ManualClock) -> (TaskRecord, TaskRequest) {
        var (record, request) = newTask(clock)
        record.id = store.newTaskID(for: dedupe)
        return (record, request)
    }

    /// An identical request gets the first task while it is queued or running, and once it
    /// succeeded until the window (counted from its accept) is over; a failed or cancelled task
    /// is never reused; another fingerprint is a task of its own. A duplicate stores nothing.
    @Test(arguments: StoreKind.allCases)
    func identicalRequestsShareATaskWhileItMayStillAnswer(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let dedupe = TaskDedupe(partner: "acme", method: "POST", pathAndQuery: "/v2/price", body: Data("{\"part\":\"A-1\"}".utf8), window: .seconds(3_600))
            let other = TaskDedupe(partner: "acme", method: "POST", pathAndQuery: "/v2/price", body: Data("{\"part\":\"A-2\"}".utf8), window: .seconds(3_600))
            let (first, request) = dedupedTask(store, dedupe, clock)
            #expect(try await store.acceptTask(first, request: request, retention: retention, dedupe: dedupe) == .accepted)
            let (second, _) = dedupedTask(store, dedupe, clock)
            #expect(try await store.acceptTask(second, request: request, retention: retention, dedupe: dedupe) == .duplicate(of: first.id))
            #expect(try await store.task(second.id) == nil, "a duplicate stores nothing")
            let (distinct, _) = dedupedTask(store, other, clock)
            #expect(try await store.acceptTask(distinct, request: request, retention: retention, dedupe: other) == .accepted)

            let running = try await start(first, in: store, clock)
            clock.advance(7_200_000)  // past the window: a running task still answers
            #expect(try await store.acceptTask(dedupedTask(store, dedupe, clock).0, request: request, retention: retention, dedupe: dedupe) == .duplicate(of: first.id))
            var succeeded = running
            _ = succeeded.lifecycle.finish(succeeded: true, at: clock.now, instance: "gw-b")
            #expect(try await store.replaceTask(succeeded, from: running.revision, retention: retention))
            let (afterWindow, _) = dedupedTask(store, dedupe, clock)
            #expect(try await store.acceptTask(afterWindow, request: request, retention: retention, dedupe: dedupe) == .accepted, "succeeded, but accepted more than the window ago")

            let runningAgain = try await start(afterWindow, in: store, clock)
            var done = runningAgain
            _ = done.lifecycle.finish(succeeded: true, at: clock.now + 1_000, instance: "gw-b")
            #expect(try await store.replaceTask(done, from: runningAgain.revision, retention: retention))
            clock.advance(1_800_000)  // inside the window
            #expect(try await store.acceptTask(dedupedTask(store, dedupe, clock).0, request: request, retention: retention, dedupe: dedupe) == .duplicate(of: afterWindow.id))

            clock.advance(3_600_000)
            let (toFail, _) = dedupedTask(store, dedupe, clock)
            #expect(try await store.acceptTask(toFail, request: request, retention: retention, dedupe: dedupe) == .accepted)
            let failing = try await start(toFail, in: store, clock)
            var failed = failing
            _ = failed.lifecycle.finish(succeeded: false, at: clock.now, instance: "gw-b")
            #expect(try await store.replaceTask(failed, from: failing.revision, retention: retention))
            let (toCancel, _) = dedupedTask(store, dedupe, clock)
            #expect(try await store.acceptTask(toCancel, request: request, retention: retention, dedupe: dedupe) == .accepted, "a failed task is not reused")
            var cancelled = toCancel
            _ = cancelled.lifecycle.cancel(at: clock.now, instance: "gw-c")
            #expect(try await store.replaceTask(cancelled, from: toCancel.revision, retention: retention))
            let (afterCancel, _) = dedupedTask(store, dedupe, clock)
            #expect(try await store.acceptTask(afterCancel, request: request, retention: retention, dedupe: dedupe) == .accepted, "a cancelled task is not reused")
        }
    }

    /// Identical accepts racing each other make one task: the store decides in one step.
    @Test(arguments: StoreKind.allCases)
    func racingIdenticalAcceptsMakeOneTask(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let dedupe = TaskDedupe(partner: "acme", method: "POST", pathAndQuery: "/v2/price?model=7", body: Data([1, 2, 3]), window: .seconds(60))
            let outcomes = try await withThrowingTaskGroup(of: (TaskID, TaskAcceptOutcome).self) { group in
                for _ in 0..<20 {
                    let (record, request) = dedupedTask(store, dedupe, clock)
                    group.addTask { (record.id, try await store.acceptTask(record, request: request, retention: retention, dedupe: dedupe)) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let accepted = outcomes.filter { $0.1 == .accepted }.map(\.0)
            try #require(accepted.count == 1)
            #expect(outcomes.filter { $0.1 == .duplicate(of: accepted[0]) }.count == 19)
            #expect(try await store.takeTasks(consumer: "w", limit: 64, lease: .seconds(30)).map(\.task) == accepted)
        }
    }

    /// Tasks spread over many shards are all found by the take, which never hands out more than
    /// its limit (the shard checks say where the work is; the takes add up to the limit).
    @Test(arguments: StoreKind.allCases)
    func takesGatherFromEveryShardUpToTheLimit(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let accepted = try await acceptTasks(40, into: store, clock)
            var taken: [TaskID] = []
            for expected in [16, 16, 8, 0] {
                let claims = try await store.takeTasks(consumer: "w", limit: 16, lease: .seconds(30))
                #expect(claims.count == expected)
                taken += claims.map(\.task)
            }
            #expect(Set(taken) == accepted)
            #expect(taken.count == 40)
        }
    }

}

/// The Redis layout of tasks: shard hash tags, TTLs, and a queue that survives losing its group.
struct TaskRedisLayoutTests {
    private func store() async throws -> (RedisStore, RedisClient) {
        let client = try await makeRedisClient()
        return (RedisStore(client: client, keyPrefix: "tasks-\(UInt32.random(in: 0...UInt32.max))"), client)
    }

    private func sample() -> (TaskRecord, TaskRequest) {
        let record = TaskRecord(
            id: TaskID.random(), partner: "acme", version: "v2", route: "price",
            lifecycle: TaskLifecycle(acceptedAt: 1_000, instance: "gw", requestID: "r")
        )
        return (record, TaskRequest(method: "POST", upstream: "pricing", pathAndQuery: "/price", headers: [], body: Data()))
    }

    /// A task's key sits in its shard's hash slot with the queue, and expires after the retention.
    @Test func taskKeyHasTheShardTagAndATTL() async throws {
        let (store, client) = try await store()
        let (record, request) = sample()
        let shard = record.id.shard(of: store.taskShards)
        #expect(store.taskKey(record.id).hasPrefix("\(store.keyPrefix):{t:\(shard)}:"))
        #expect(store.queueKey(shard).hasPrefix("\(store.keyPrefix):{t:\(shard)}:"))
        let accepted = ContinuousClock.now
        #expect(try await store.acceptTask(record, request: request, retention: .seconds(3_600)))
        try await expectTTL(store.taskKey(record.id), on: client, set: .seconds(3_600), since: accepted)
        await client.shutdown()
    }

    /// A shard's index and status sets outlive their members (at least the retention after the
    /// newest accept), but their expiry is pushed only when less than the retention is left — not
    /// on every accept, which would be a write (and a replicated one) per task.
    @Test func shardSetsOutliveTheirMembersWithoutAWritePerAccept() async throws {
        let (store, client) = try await store()
        let (first, request) = sample()
        let shard = first.id.shard(of: store.taskShards)
        let sets = [store.indexKey(shard), store.statusKeys(shard)[0]]
        func ttl(_ key: String) async throws -> Int64 {
            guard case .integer(let ttl) = try await client.send(["PTTL", key]) else { throw RedisError.protocolViolation("PTTL") }
            return ttl
        }
        var accepted = ContinuousClock.now
        #expect(try await store.acceptTask(first, request: request, retention: .seconds(3_600)))
        for key in sets { try await expectTTL(key, on: client, set: .seconds(3_660), since: accepted) }
        // Another accept with more than the retention left changes no expiry.
        let before = try await ttl(sets[0])
        var second = first
        second.id = TaskID.random(inShard: shard, of: store.taskShards)
        #expect(try await store.acceptTask(second, request: request, retention: .seconds(3_600)))
        #expect(try await ttl(sets[0]) <= before)
        // With less than the retention left, the next accept pushes it a minute beyond.
        for key in sets { _ = try await client.send(["PEXPIRE", key, "5000"]) }
        var third = first
        third.id = TaskID.random(inShard: shard, of: store.taskShards)
        accepted = ContinuousClock.now
        #expect(try await store.acceptTask(third, request: request, retention: .seconds(3_600)))
        for key in sets { try await expectTTL(key, on: client, set: .seconds(3_660), since: accepted) }
        await client.shutdown()
    }

    /// When the queue and its group vanish (Redis restarted empty), the next take recreates them and new tasks flow.
    @Test func queueRecoversFromALostGroup() async throws {
        let (store, client) = try await store()
        let (first, request) = sample()
        #expect(try await store.acceptTask(first, request: request, retention: .seconds(60)))
        #expect(try await store.takeTasks(consumer: "w", limit: 16, lease: .seconds(30)).map(\.task) == [first.id])
        for shard in 0..<store.taskShards { _ = try await client.send(["DEL", store.queueKey(shard)]) }
        let (second, _) = sample()
        #expect(try await store.acceptTask(second, request: request, retention: .seconds(60)))
        #expect(try await store.takeTasks(consumer: "w", limit: 16, lease: .seconds(30)).map(\.task) == [second.id])
        await client.shutdown()
    }

    /// A corrupted record in Redis is reported as a protocol problem, not decoded into nonsense.
    @Test func corruptedRecordIsAnError() async throws {
        let (store, client) = try await store()
        let (record, _) = sample()
        _ = try await client.send(["HSET", store.taskKey(record.id), "j", "{\"id\":\"not-a-task\"}"])
        await #expect(throws: RedisError.self) { try await store.task(record.id) }
        await client.shutdown()
    }
}

/// Webhook messages behave the same on both stores: scheduled with their task's last
/// transition, taken by one sender at a time, rescheduled, delivered, buried and redriven.
struct WebhookStoreContractTests {
    private let retention: Duration = .seconds(7 * 86_400)

    /// A task finished with a webhook message, for the tests below.
    private func finishedTask(_ store: any StoreUnderTest, _ clock: ManualClock, partner: String = "acme") async throws -> WebhookMessage {
        var record = TaskRecord(
            id: TaskID.random(), partner: partner, version: "v2", route: "price", lifecycle: TaskLifecycle(acceptedAt: clock.now, instance: "a", requestID: "r")
        )
        let request = TaskRequest(method: "POST", upstream: "pricing", pathAndQuery: "/price", headers: [], body: Data())
        #expect(try await store.acceptTask(record, request: request, retention: retention))
        let queued = record.revision
        _ = record.lifecycle.cancel(at: clock.now, instance: "a")
        let message = WebhookMessage(finished: record, at: clock.now)
        #expect(try await store.replaceTask(record, from: queued, retention: retention, notify: message))
        return message
    }

    /// The message scheduled with the task's transition is due at once, for one sender; after its lease it is due again.
    @Test(arguments: StoreKind.allCases, ClockEpoch.allCases)
    func scheduledWithTheTransitionAndHeldForOneSender(_ kind: StoreKind, _ epoch: ClockEpoch) async throws {
        let clock = ManualClock(epoch)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            let message = try await finishedTask(store, clock)
            #expect(message.type == "task.cancelled")
            #expect(try await store.takeDueWebhooks(limit: 10, lease: .seconds(30)) == [message])
            #expect(try await store.takeDueWebhooks(limit: 10, lease: .seconds(30)).isEmpty)
            clock.advance(30_000)
            #expect(try await store.takeDueWebhooks(limit: 10, lease: .seconds(30)) == [message])
        }
    }

    /// A rescheduled message keeps its new state and is due only after the delay; a delivered one never again.
    @Test(arguments: StoreKind.allCases)
    func rescheduledThenDelivered(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            var message = try await finishedTask(store, clock)
            _ = try await store.takeDueWebhooks(limit: 10, lease: .seconds(30))
            message.attempts = 1
            message.lastError = "HTTP 500"
            try await store.rescheduleWebhook(message, after: .seconds(5), retention: retention)
            clock.advance(4_999)
            #expect(try await store.takeDueWebhooks(limit: 10, lease: .seconds(30)).isEmpty)
            clock.advance(1)
            #expect(try await store.takeDueWebhooks(limit: 10, lease: .seconds(30)) == [message])
            try await store.webhookDelivered(message)
            clock.advance(3_600_000)
            #expect(try await store.takeDueWebhooks(limit: 10, lease: .seconds(30)).isEmpty)
        }
    }

    /// A buried message is listed as dead (by partner) and never due; a redrive makes it due with a fresh schedule, once.
    @Test(arguments: StoreKind.allCases)
    func buriedThenRedriven(_ kind: StoreKind) async throws {
        let clock = ManualClock(.present)
        try await withStore(kind, clock: clock) { (store: any StoreUnderTest) async throws in
            var message = try await finishedTask(store, clock)
            let other = try await finishedTask(store, clock, partner: "globex")
            _ = try await store.takeDueWebhooks(limit: 10, lease: .seconds(30))
            message.attempts = 10
            message.lastError = "HTTP 503"
            try await store.buryWebhook(message, retention: retention)
            clock.advance(86_400_000)
            let due = try await store.takeDueWebhooks(limit: 10, lease: .seconds(30))
            #expect(due.map(\.id) == [other.id])
            let dead = try await store.deadWebhooks(partner: "acme", limit: 10)
            #expect(dead.map(\.id) == [message.id])
            #expect(dead.first?.lastError == "HTTP 503" && dead.first?.deadAt != nil)
            #expect(try await store.deadWebhooks(partner: "globex", limit: 10).isEmpty)
            #expect(try await store.redriveWebhook(id: message.id, retention: retention))
            #expect(try await store.redriveWebhook(id: message.id, retention: retention) == false)
            #expect(try await store.redriveWebhook(id: "msg_doesnotexist0000000000000", retention: retention) == false)
            #expect(try await store.redriveWebhook(id: "../../etc", retention: retention) == false)
            let redriven = try await store.takeDueWebhooks(limit: 10, lease: .seconds(30))
            #expect(redriven.map(\.id) == [message.id])
            #expect(redriven.first?.attempts == 0 && redriven.first?.lastError == nil && redriven.first?.deadAt == nil)
            #expect(try await store.deadWebhooks(partner: nil, limit: 10).isEmpty)
        }
    }
}
