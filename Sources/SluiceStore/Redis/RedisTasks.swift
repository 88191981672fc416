import Foundation
import Synchronization
public import NIOCore
public import SluiceCore

extension RedisStore: TaskStore, WebhookStore {
    /// Queue shards unless `tasks.shards` says otherwise: each shard is one hash slot, and 64
    /// spread over a dozen primaries of a cluster.
    public static let defaultTaskShards = 64
    /// The consumer group every instance's workers read through.
    static let taskGroup = "workers"
    /// Newest tasks looked at per shard when listing.
    static let listScanPerShard = 2_000

    func taskShardBase(_ shard: Int) -> String { "\(keyPrefix):{t:\(shard)}" }
    func taskKey(_ id: TaskID) -> String { "\(taskShardBase(id.shard(of: taskShards))):task:\(id.text)" }
    func queueKey(_ shard: Int) -> String { "\(taskShardBase(shard)):queue" }
    func indexKey(_ shard: Int) -> String { "\(taskShardBase(shard)):index" }
    func messageKey(_ id: String) -> String? {
        guard let task = TaskID("tsk_" + id.dropFirst(4)), id.hasPrefix("msg_") else { return nil }
        return "\(taskShardBase(task.shard(of: taskShards))):webhook:\(id)"
    }
    /// The sorted sets of a shard's tasks by status, in `TaskStatus.allCases` order (queued first).
    func statusKeys(_ shard: Int) -> [String] { TaskStatus.allCases.map { "\(taskShardBase(shard)):status:\($0.rawValue)" } }
    func dueKey(_ shard: Int) -> String { "\(taskShardBase(shard)):webhooks:due" }
    func deadKey(_ shard: Int) -> String { "\(taskShardBase(shard)):webhooks:dead" }
    private var now: String { clock.map { String($0()) } ?? "" }

    public func acceptTask(
        _ record: TaskRecord, request: TaskRequest, retention: Duration, dedupe: TaskDedupe?, on eventLoop: any EventLoop,
        completion: @escaping (Result<TaskAcceptOutcome, any Error>) -> Void
    ) {
        let shard = record.id.shard(of: taskShards)
        var keys = [taskKey(record.id), queueKey(shard), indexKey(shard), statusKeys(shard)[0]]
        var arguments = [
            record.encoded(), request.encoded(), String(retention.milliseconds), record.id.text, String(record.revision), now,
        ]
        var script = TaskScripts.accept
        if let dedupe {
            guard dedupe.shard(of: taskShards) == shard else {
                return completion(.failure(RedisError.protocolViolation("a deduplicated task's id must come from newTaskID(for:)")))
            }
            let statuses = statusKeys(shard)
            keys += [statuses[1], statuses[2], "\(taskShardBase(shard)):dedupe:\(dedupe.fingerprint)"]
            arguments.append(String(dedupe.window.milliseconds))
            script = TaskScripts.acceptDeduplicated
        }
        bulk.evaluate(script, keys: keys, arguments: arguments, on: eventLoop).assumeIsolatedUnsafeUnchecked().whenComplete { result in
            completion(result.flatMap { reply in
                switch reply {
                case .integer(1): .success(.accepted)
                case .integer(0): .success(.refused)
                case .string(let bytes):
                    TaskID(String(decoding: bytes, as: UTF8.self)).map { .success(.duplicate(of: $0)) }
                        ?? .failure(RedisError.protocolViolation("unexpected accept reply \(reply)"))
                default: .failure(RedisError.protocolViolation("unexpected accept reply \(reply)"))
                }
            })
        }
    }

    /// A deduplicated task lives in its fingerprint's shard, so that one script sees both.
    public func newTaskID(for dedupe: TaskDedupe?) -> TaskID {
        guard let dedupe else { return TaskID.random() }
        return TaskID.random(inShard: dedupe.shard(of: taskShards), of: taskShards)
    }

    public func resolveAccept(
        _ id: TaskID, withdraw: Bool, on eventLoop: any EventLoop, completion: @escaping (Result<AcceptResolution, any Error>) -> Void
    ) {
        let shard = id.shard(of: taskShards)
        let keys = [taskKey(id), indexKey(shard), statusKeys(shard)[0]]
        let arguments = [id.text, withdraw ? "1" : "0", String(Self.voidMilliseconds)]
        bulk.evaluate(TaskScripts.resolveAccept, keys: keys, arguments: arguments, on: eventLoop).assumeIsolatedUnsafeUnchecked().whenComplete { result in
            completion(result.flatMap { reply in
                guard case .string(let bytes) = reply, let resolution = AcceptResolution(rawValue: String(decoding: bytes, as: UTF8.self)) else {
                    return .failure(RedisError.protocolViolation("unexpected resolve reply \(reply)"))
                }
                return .success(resolution)
            })
        }
    }

    /// What the store says about the task layout this store uses.
    public enum TaskLayout: Equatable, Sendable {
        /// The store's tasks use `taskShards` shards (or it had none yet; it is marked now).
        case matches
        /// Gateways with another `tasks.shards` use the store: each finds only its own tasks.
        case otherShardCount(Int)
        /// Tasks of gateways from before `tasks.shards` (16 shards) are in the store.
        case legacy16
    }

    /// Compares `taskShards` with the count the store was marked with (`PREFIX:{t:layout}:shards`),
    /// marking it when unmarked; an unmarked store holding tasks is from the 16-shard layout.
    public func checkTaskLayout() async throws -> TaskLayout {
        let marker = "\(keyPrefix):{t:layout}:shards"
        if case .string(let bytes) = try await bulk.send(["GET", marker]) {
            let stored = Int(String(decoding: bytes, as: UTF8.self)) ?? 0
            return stored == taskShards ? .matches : .otherShardCount(stored)
        }
        if taskShards != 16 {
            let counts = (0..<16).map { bulk.send(["ZCARD", indexKey($0)], on: defaultEventLoop) }
            for count in counts {
                if case .integer(let tasks) = try await count.get(), tasks > 0 { return .legacy16 }
            }
        }
        _ = try await bulk.send(["SET", marker, String(taskShards), "NX"])
        return .matches
    }

    /// How long a void refuses a late accept: far longer than any accept can be on its way.
    static let voidMilliseconds: Int64 = 3_600_000

    public func task(_ id: TaskID, _ read: TaskRead, on eventLoop: any EventLoop, completion: @escaping (Result<TaskRecord?, any Error>) -> Void) {
        switch read {
        case .status:
            bulk.send(["HGET", taskKey(id), "j"], on: eventLoop).assumeIsolatedUnsafeUnchecked().whenComplete { result in
                completion(result.flatMap { reply in Result { try Self.record(from: reply)?.withoutResult } })
            }
        case .statusAndResult:
            // `o` exists once the task finished: an unfinished task's read moves no result.
            bulk.send(["HMGET", taskKey(id), "j", "o"], on: eventLoop).assumeIsolatedUnsafeUnchecked().whenComplete { result in
                completion(result.flatMap { reply in Result { try Self.recordWithResult(from: reply) } })
            }
        }
    }

    public func replaceTask(
        _ record: TaskRecord, from revision: Int, retention: Duration, notify: WebhookMessage?, on eventLoop: any EventLoop,
        completion: @escaping (Result<Bool, any Error>) -> Void
    ) {
        let shard = record.id.shard(of: taskShards)
        let messageID = "msg_" + record.id.text.dropFirst(4)
        let keys = [taskKey(record.id), messageKey(messageID)!, dueKey(shard)] + statusKeys(shard)
        // The history is append-only and its versions count up, so the stored record's status is
        // the entry at `revision` (if the stored one differs, the script changes nothing).
        let stored = record.lifecycle.history[min(max(revision, 1), record.lifecycle.history.count) - 1].status
        func position(_ status: TaskStatus) -> String { String(TaskStatus.allCases.firstIndex(of: status)! + 1) }
        let arguments = [
            record.withoutResult.encoded(), String(revision), String(record.revision), String(retention.milliseconds),
            record.lifecycle.status.isFinished ? "1" : "0", notify?.encoded() ?? "", messageID, now, record.id.text,
            position(record.lifecycle.status), position(stored), record.result?.encoded() ?? "",
        ]
        bulk.evaluate(TaskScripts.replace, keys: keys, arguments: arguments, on: eventLoop).assumeIsolatedUnsafeUnchecked().whenComplete { result in
            completion(result.map { $0 == .integer(1) })
        }
    }

    public func taskRequest(_ id: TaskID) async throws -> TaskRequest? {
        switch try await bulk.send(["HGET", taskKey(id), "q"]) {
        case .null:
            return nil
        case .string(let bytes):
            guard let request = TaskRequest(encoded: bytes) else { throw RedisError.protocolViolation("malformed task request of \(id)") }
            return request
        case let reply:
            throw RedisError.protocolViolation("unexpected task request reply \(reply)")
        }
    }

    /// Asks every shard whether it has work (cheap read-only checks: one call on one Redis; on
    /// a cluster one per shard, all at once), then takes from those that do, one after the other,
    /// each for what is still missing: never more than `limit` entries are taken. The order
    /// starts one further than the last check did, so every shard gets its turn first; while
    /// there is a backlog, the next takes go on with the shards found (`ShardWorkList`). Taking,
    /// renewing, due-webhook polls and counts are not `durable`: one lost in a failover only
    /// delays a task until its lease runs out, while a `WAIT` behind every shard's idle poll would
    /// hold the bulk connection for `replica_timeout` each.
    public func takeTasks(consumer: String, limit: Int, lease: Duration) async throws -> [TaskClaim] {
        try await takeFromShards(
            taskWork, limit: limit,
            check: { try await shardsWithWork(TaskScripts.queuesWithWork, key: queueKey, arguments: [Self.taskGroup, String(lease.milliseconds)]) },
            take: { shard, missing in
                let reply = try await bulk.evaluate(
                    TaskScripts.take, keys: [queueKey(shard)],
                    arguments: [Self.taskGroup, consumer, String(missing), String(lease.milliseconds)], durable: false, on: defaultEventLoop
                ).get()
                let claims = try Self.claims(from: reply)
                return (claims, claims.count == missing)
            }
        )
    }

    /// Takes up to `limit` items, shard after shard, from the shards `work` still lists (when
    /// it was checked lately) or else those `check` finds now. `take(shard, missing)` answers
    /// the items and whether it gave all it was asked for (the shard may have more). The shards
    /// not emptied stay listed for the next call.
    private func takeFromShards<Item>(
        _ work: borrowing Mutex<ShardWorkList>, limit: Int, check: () async throws -> [Int],
        take: (_ shard: Int, _ missing: Int) async throws -> (items: [Item], full: Bool)
    ) async throws -> [Item] {
        let listed = work.withLock { $0.current(at: ContinuousClock.now) }
        var shards: ArraySlice<Int>
        if let listed {
            shards = listed[...]
        } else {
            let checkedAt = ContinuousClock.now
            shards = try await check()[...]
            work.withLock { $0.checked(at: checkedAt) }
        }
        var items: [Item] = []
        while let shard = shards.first, items.count < limit {
            let taken = try await take(shard, limit - items.count)
            items += taken.items
            if !taken.full { shards = shards.dropFirst() }
        }
        work.withLock { $0.shards = Array(shards) }
        return items
    }

    /// The shards that `check` finds work in, in the order of a start that rotates from call to
    /// call. One Redis gets one call with every shard's key; a cluster one call per primary with
    /// the shards it serves (one per shard on Redis < 7), all sent at once.
    private func shardsWithWork(_ check: ShardCheck, key: (Int) -> String, arguments: [String]) async throws -> [Int] {
        let first = Int(UInt(bitPattern: nextCheckedShard.wrappingAdd(1, ordering: .relaxed).oldValue) % UInt(taskShards))
        let order = (0..<taskShards).map { (first + $0) % taskShards }
        let calls: [[Int]]
        if bulk.primary.cluster == nil {
            calls = [order]
        } else if nodeChecksRefused.load(ordering: .relaxed) {
            calls = order.map { [$0] }
        } else {
            calls = bulk.groupedByPrimary(order.map(key)).map { $0.map { order[$0] } }
        }
        let replies = calls.map { shards in (shards, checkShards(shards, check, key: key, arguments: arguments)) }
        var ready: [Int] = []
        for (shards, reply) in replies {
            do {
                ready += try Self.shards(shards, withWorkIn: await reply.get())
            } catch RedisError.server(let message) where shards.count > 1 && bulk.primary.cluster != nil && message.contains("compiling") {
                // Redis < 7 cannot compile the flagged script: one call per shard, now and later.
                nodeChecksRefused.store(true, ordering: .relaxed)
                for shard in shards {
                    ready += try Self.shards([shard], withWorkIn: await checkShards([shard], check, key: key, arguments: arguments).get())
                }
            }
        }
        return ready
    }

    /// The shards whose positions (from 1) a shard check answered.
    private static func shards(_ shards: [Int], withWorkIn reply: RedisReply) throws -> [Int] {
        guard case .array(let positions) = reply else { throw RedisError.protocolViolation("unexpected shard check reply") }
        return positions.compactMap { position in
            guard case .integer(let position) = position, (1...shards.count).contains(Int(position)) else { return nil }
            return shards[Int(position) - 1]
        }
    }

    /// One call of `check` on `shards`: with every key declared, or on a cluster for the shards
    /// of one primary, with the first key declared and the others after `arguments`.
    private func checkShards(_ shards: [Int], _ check: ShardCheck, key: (Int) -> String, arguments: [String]) -> EventLoopFuture<RedisReply> {
        guard shards.count > 1, bulk.primary.cluster != nil else {
            return bulk.evaluate(check.declared, keys: shards.map(key), arguments: arguments, durable: false, on: defaultEventLoop)
        }
        return bulk.evaluate(check.onNode, keys: [key(shards[0])], arguments: arguments + shards.dropFirst().map(key), durable: false, on: defaultEventLoop)
    }

    public func renewTasks(_ claims: [TaskClaim], consumer: String) async throws -> [TaskClaim] {
        let byShard = Dictionary(grouping: claims) { $0.task.shard(of: taskShards) }
        var held: [TaskClaim] = []
        for (shard, claims) in byShard {
            let reply = try await bulk.evaluate(
                TaskScripts.renew, keys: [queueKey(shard)], arguments: [Self.taskGroup, consumer] + claims.map(\.entry), durable: false, on: defaultEventLoop
            ).get()
            guard case .array(let ids) = reply else { throw RedisError.protocolViolation("unexpected renew reply \(reply)") }
            let still = Set(Self.strings(.array(ids)))
            held += claims.filter { still.contains($0.entry) }
        }
        return held
    }

    public func completeEntry(_ claim: TaskClaim) async throws {
        let queue = queueKey(claim.task.shard(of: taskShards))
        _ = try await bulk.evaluate(TaskScripts.complete, keys: [queue], arguments: [Self.taskGroup, claim.entry], on: defaultEventLoop).get()
    }

    public func requeue(_ claim: TaskClaim, consumer: String) async throws {
        let queue = queueKey(claim.task.shard(of: taskShards))
        _ = try await bulk.evaluate(
            TaskScripts.requeue, keys: [queue], arguments: [Self.taskGroup, consumer, claim.entry, claim.task.text], on: defaultEventLoop
        ).get()
    }

    public func listTasks(status: TaskStatus?, partner: String?, limit: Int) async throws -> [TaskRecord] {
        let eventLoop = defaultEventLoop
        let scans = (0..<taskShards).map { shard in
            bulk.send(["ZREVRANGE", indexKey(shard), "0", String(Self.listScanPerShard - 1), "WITHSCORES"], on: eventLoop)
        }
        var candidates: [(at: Double, id: TaskID)] = []
        for scan in scans {
            guard case .array(let items) = try await scan.get() else { continue }
            for pair in stride(from: 0, to: items.count - 1, by: 2) {
                guard case .string(let idBytes) = items[pair], case .string(let scoreBytes) = items[pair + 1],
                    let id = TaskID(String(decoding: idBytes, as: UTF8.self)), let at = Double(String(decoding: scoreBytes, as: UTF8.self))
                else { continue }
                candidates.append((at, id))
            }
        }
        candidates.sort { ($0.at, $0.id.text) > ($1.at, $1.id.text) }
        var found: [TaskRecord] = []
        var next = candidates[...]
        while found.count < limit, !next.isEmpty {
            let page = next.prefix(100)
            next = next.dropFirst(page.count)
            let reads = page.map { bulk.send(["HGET", taskKey($0.id), "j"], on: eventLoop) }
            for read in reads {
                guard let record = try Self.record(from: try await read.get())?.withoutResult else { continue }
                if (status == nil || record.lifecycle.status == status) && (partner == nil || record.partner == partner) { found.append(record) }
            }
        }
        return Array(found.prefix(limit))
    }

    // MARK: - Webhook messages

    public func takeDueWebhooks(limit: Int, lease: Duration) async throws -> [WebhookMessage] {
        try await takeFromShards(
            dueWork, limit: limit,
            check: { try await shardsWithWork(TaskScripts.dueSetsWithWork, key: dueKey, arguments: [now]) },
            take: { shard, missing in
                let reply = try await bulk.evaluate(
                    TaskScripts.takeDue, keys: [dueKey(shard)], arguments: [String(missing), String(lease.milliseconds), now], durable: false, on: defaultEventLoop
                ).get()
                let ids = Self.strings(reply)
                var messages: [WebhookMessage] = []
                for id in ids {
                    guard let key = messageKey(id) else { continue }
                    switch try await bulk.send(["GET", key]) {
                    case .string(let bytes):
                        guard let message = WebhookMessage(encoded: bytes) else { throw RedisError.protocolViolation("malformed webhook message \(id)") }
                        messages.append(message)
                    default:
                        // Expired with its task: nothing left to send.
                        _ = try await bulk.send(["ZREM", dueKey(shard), id])
                    }
                }
                return (messages, ids.count == missing)
            }
        )
    }

    public func rescheduleWebhook(_ message: WebhookMessage, after delay: Duration, retention: Duration) async throws {
        try await schedule(message, delay: String(delay.milliseconds), retention: retention)
    }

    public func webhookDelivered(_ message: WebhookMessage) async throws {
        guard let key = messageKey(message.id) else { return }
        _ = try await bulk.send(["DEL", key])
        _ = try await bulk.send(["ZREM", dueKey(message.task.shard(of: taskShards)), message.id])
    }

    public func buryWebhook(_ message: WebhookMessage, retention: Duration) async throws {
        var dead = message
        dead.deadAt = clock?() ?? Int64((Date().timeIntervalSince1970 * 1_000).rounded(.down))
        try await schedule(dead, delay: "", retention: retention)
    }

    private func schedule(_ message: WebhookMessage, delay: String, retention: Duration) async throws {
        guard let key = messageKey(message.id) else { throw RedisError.protocolViolation("not a webhook message id: \(message.id)") }
        let shard = message.task.shard(of: taskShards)
        _ = try await bulk.evaluate(
            TaskScripts.schedule, keys: [key, dueKey(shard), deadKey(shard)],
            arguments: [message.encoded(), delay, String(retention.milliseconds), message.id, now], on: defaultEventLoop
        ).get()
    }

    public func deadWebhooks(partner: String?, limit: Int) async throws -> [WebhookMessage] {
        var dead: [WebhookMessage] = []
        let scans = (0..<taskShards).map { shard in
            bulk.send(["ZREVRANGE", deadKey(shard), "0", String(Self.listScanPerShard - 1)], on: defaultEventLoop)
        }
        for scan in scans {
            for id in Self.strings(try await scan.get()) {
                guard let key = messageKey(id), case .string(let bytes) = try await bulk.send(["GET", key]),
                    let message = WebhookMessage(encoded: bytes)
                else { continue }
                if partner == nil || message.partner == partner { dead.append(message) }
            }
        }
        return Array(dead.sorted { ($0.deadAt ?? 0, $0.id) > ($1.deadAt ?? 0, $1.id) }.prefix(limit))
    }

    public func redriveWebhook(id: String, retention: Duration) async throws -> Bool {
        guard let key = messageKey(id), case .string(let bytes) = try await bulk.send(["GET", key]), var message = WebhookMessage(encoded: bytes)
        else { return false }
        message.attempts = 0
        message.lastError = nil
        message.deadAt = nil
        let shard = message.task.shard(of: taskShards)
        let reply = try await bulk.evaluate(
            TaskScripts.redrive, keys: [key, dueKey(shard), deadKey(shard)], arguments: [message.encoded(), String(retention.milliseconds), id, now],
            on: defaultEventLoop
        ).get()
        return reply == .integer(1)
    }

    public func deadWebhookCount(retention: Duration) async throws -> Int {
        // Every shard at once (they live on different nodes of a cluster).
        let replies = (0..<taskShards).map { shard in
            bulk.evaluate(TaskScripts.countDead, keys: [deadKey(shard)], arguments: [String(retention.milliseconds), now], durable: false, on: defaultEventLoop)
        }
        var count = 0
        for reply in replies {
            if case .integer(let shardCount) = try await reply.get() { count += Int(shardCount) }
        }
        return count
    }

    public func taskCensus(retention: Duration) async throws -> TaskCensus {
        let statuses = TaskStatus.allCases
        var counts: [TaskStatus: Int] = [:]
        var oldestQueuedAt: Int64?
        var byRoute: [String: Int64] = [:]
        // Every shard at once (they live on different nodes of a cluster).
        let replies = (0..<taskShards).map { shard in
            let arguments = [String(retention.milliseconds), now, String(TaskCensus.routeScanLimit), "\(taskShardBase(shard)):task:"]
            return bulk.evaluate(TaskScripts.census, keys: statusKeys(shard), arguments: arguments, durable: false, on: defaultEventLoop)
        }
        for pending in replies {
            let reply = try await pending.get()
            let malformed = RedisError.protocolViolation("unexpected census reply \(reply)")
            guard case .array(let items) = reply, items.count > statuses.count, (items.count - statuses.count - 1) % 2 == 0 else { throw malformed }
            let numbers = try items.prefix(statuses.count + 1).map { item in
                guard case .integer(let number) = item else { throw malformed }
                return number
            }
            for (status, count) in zip(statuses, numbers) { counts[status, default: 0] += Int(count) }
            if numbers[statuses.count] >= 0 { oldestQueuedAt = min(oldestQueuedAt ?? numbers[statuses.count], numbers[statuses.count]) }
            for pair in stride(from: statuses.count + 1, to: items.count, by: 2) {
                guard case .string(let name) = items[pair], case .integer(let at) = items[pair + 1] else { throw malformed }
                let route = String(decoding: name, as: UTF8.self)
                byRoute[route] = min(byRoute[route] ?? at, at)
            }
        }
        return TaskCensus(counts: counts, oldestQueuedAt: oldestQueuedAt, oldestQueuedAtByRoute: byRoute)
    }

    static func strings(_ reply: RedisReply) -> [String] {
        guard case .array(let items) = reply else { return [] }
        return items.compactMap { if case .string(let bytes) = $0 { String(decoding: bytes, as: UTF8.self) } else { nil } }
    }

    static func record(from reply: RedisReply) throws -> TaskRecord? {
        switch reply {
        case .null:
            return nil
        case .string(let bytes):
            guard let record = TaskRecord(encoded: bytes) else { throw RedisError.protocolViolation("malformed task record") }
            return record
        default:
            throw RedisError.protocolViolation("unexpected task reply \(reply)")
        }
    }

    /// A record and its result from `HMGET j o`; a result kept inside the record (by gateways
    /// before the result had a field of its own) is kept.
    static func recordWithResult(from reply: RedisReply) throws -> TaskRecord? {
        guard case .array(let fields) = reply, fields.count == 2 else { throw RedisError.protocolViolation("unexpected task reply \(reply)") }
        guard var record = try record(from: fields[0]) else { return nil }
        if case .string(let bytes) = fields[1] {
            guard let result = TaskResult(encoded: bytes) else { throw RedisError.protocolViolation("malformed task result") }
            record.result = result
        }
        return record
    }

    static func claims(from reply: RedisReply) throws -> [TaskClaim] {
        guard case .array(let items) = reply, items.count % 3 == 0 else { throw RedisError.protocolViolation("unexpected take reply \(reply)") }
        return try stride(from: 0, to: items.count, by: 3).map { index in
            guard case .string(let entry) = items[index], case .string(let task) = items[index + 1], case .integer(let flag) = items[index + 2],
                let id = TaskID(String(decoding: task, as: UTF8.self))
            else { throw RedisError.protocolViolation("malformed take reply") }
            return TaskClaim(task: id, entry: String(decoding: entry, as: UTF8.self), takenOver: flag == 1)
        }
    }
}
