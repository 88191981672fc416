import Foundation
public import NIOCore
public import SluiceCore
import Synchronization

/// The embedded store's tasks: records, requests, one queue and the webhook messages behind one lock (tasks are
/// accepted by the thousand per second, not the hundred thousand). Not durable: a restart
/// loses them, which the README says of the embedded store.
final class TaskTable: Sendable {
    private struct Stored {
        var record: TaskRecord
        var request: TaskRequest?
        var expires: Int64
    }

    private struct Held {
        var task: TaskID
        var consumer: String
        /// When it was taken or last renewed.
        var since: Int64
    }

    private struct Message {
        var message: WebhookMessage
        /// When it is due; nil while dead.
        var due: Int64?
        var expires: Int64
    }

    private struct State {
        var tasks: [TaskID: Stored] = [:]
        /// Ids whose lost accept was settled as not stored, until when a late accept is refused.
        var voided: [TaskID: Int64] = [:]
        var messages: [String: Message] = [:]
        /// Entries not taken yet, oldest first: entry id and task.
        var queue: [(entry: String, task: TaskID)] = []
        var queueStart = 0
        /// Taken entries by entry id, in the order they were taken.
        var held: [String: Held] = [:]
        var nextEntry = 1
        var writesSinceSweep = 0
        /// Deduplicated requests: fingerprint → the task identical requests get, and until when
        /// the entry is kept.
        var fingerprints: [String: (task: TaskID, expires: Int64)] = [:]
    }

    private let state = Mutex(State())
    private let clock: EpochClock

    init(clock: @escaping EpochClock) {
        self.clock = clock
    }

    func accept(_ record: TaskRecord, request: TaskRequest, retentionMilliseconds: Int64, dedupe: TaskDedupe?) -> TaskAcceptOutcome {
        let now = clock()
        return state.withLock { state in
            if let dedupe, let prior = state.fingerprints[dedupe.fingerprint], prior.expires > now,
                let stored = state.tasks[prior.task], stored.expires > now,
                Self.answersDuplicates(stored.record, window: dedupe.window, now: now)
            {
                return .duplicate(of: prior.task)
            }
            if let existing = state.tasks[record.id], existing.expires > now { return .refused }
            if let until = state.voided[record.id], until > now { return .refused }
            state.tasks[record.id] = Stored(record: record, request: request, expires: now + retentionMilliseconds)
            state.queue.append((entry: String(state.nextEntry), task: record.id))
            state.nextEntry += 1
            if let dedupe {
                state.fingerprints[dedupe.fingerprint] = (record.id, now + max(dedupe.window.milliseconds, retentionMilliseconds))
            }
            Self.sweepNowAndThen(&state, now: now)
            return .accepted
        }
    }

    /// Whether an identical request still gets `record`: while it is queued or running, and once
    /// it succeeded, until `window` after its accept (failed and cancelled tasks are not reused).
    private static func answersDuplicates(_ record: TaskRecord, window: Duration, now: Int64) -> Bool {
        switch record.lifecycle.status {
        case .queued, .running: true
        case .succeeded: now - record.lifecycle.createdAt < window.milliseconds
        case .failed, .cancelled: false
        }
    }

    func resolveAccept(_ id: TaskID, withdraw: Bool) -> AcceptResolution {
        let now = clock()
        return state.withLock { state in
            guard let stored = state.tasks[id], stored.expires > now else {
                state.voided[id] = now + TaskTable.voidedMilliseconds
                return .voided
            }
            guard withdraw else { return .stored }
            guard stored.record.revision == 1 else { return .moved }
            state.tasks[id] = nil
            return .withdrawn
        }
    }

    /// How long a voided id refuses a late accept: far longer than any accept can be on its way.
    static let voidedMilliseconds: Int64 = 3_600_000

    func task(_ id: TaskID) -> TaskRecord? {
        let now = clock()
        return state.withLock { state in
            guard let stored = state.tasks[id], stored.expires > now else { return nil }
            return stored.record
        }
    }

    func replace(_ record: TaskRecord, from revision: Int, retentionMilliseconds: Int64, notify: WebhookMessage?) -> Bool {
        let now = clock()
        return state.withLock { state in
            guard var stored = state.tasks[record.id], stored.expires > now, stored.record.revision == revision else { return false }
            stored.record = record
            stored.expires = now + retentionMilliseconds
            if record.lifecycle.status.isFinished { stored.request = nil }
            state.tasks[record.id] = stored
            if let notify { state.messages[notify.id] = Message(message: notify, due: now, expires: now + retentionMilliseconds) }
            return true
        }
    }

    func takeDueMessages(limit: Int, leaseMilliseconds: Int64) -> [WebhookMessage] {
        let now = clock()
        return state.withLock { state in
            let due = state.messages.filter { $0.value.expires > now && ($0.value.due ?? .max) <= now }
                .sorted { ($0.value.due!, $0.key) < ($1.value.due!, $1.key) }
                .prefix(limit)
            for (id, _) in due { state.messages[id]?.due = now + leaseMilliseconds }
            return due.map(\.value.message)
        }
    }

    func reschedule(_ message: WebhookMessage, afterMilliseconds delay: Int64, retentionMilliseconds: Int64) {
        let now = clock()
        state.withLock { $0.messages[message.id] = Message(message: message, due: now + delay, expires: now + retentionMilliseconds) }
    }

    func delivered(_ message: WebhookMessage) {
        _ = state.withLock { $0.messages.removeValue(forKey: message.id) }
    }

    func bury(_ message: WebhookMessage, retentionMilliseconds: Int64) {
        let now = clock()
        var dead = message
        dead.deadAt = now
        state.withLock { $0.messages[message.id] = Message(message: dead, due: nil, expires: now + retentionMilliseconds) }
    }

    func deadMessages(partner: String?, limit: Int) -> [WebhookMessage] {
        let now = clock()
        return state.withLock { state in
            state.messages.values
                .filter { $0.due == nil && $0.expires > now && (partner == nil || $0.message.partner == partner) }
                .map(\.message)
                .sorted { ($0.deadAt ?? 0, $0.id) > ($1.deadAt ?? 0, $1.id) }
                .prefix(limit)
                .map { $0 }
        }
    }

    func deadMessageCount() -> Int {
        let now = clock()
        return state.withLock { state in state.messages.values.count { $0.due == nil && $0.expires > now } }
    }

    func redrive(id: String, retentionMilliseconds: Int64) -> Bool {
        let now = clock()
        return state.withLock { state in
            guard var entry = state.messages[id], entry.due == nil, entry.expires > now else { return false }
            entry.message.attempts = 0
            entry.message.lastError = nil
            entry.message.deadAt = nil
            entry.due = now
            entry.expires = now + retentionMilliseconds
            state.messages[id] = entry
            return true
        }
    }

    func request(_ id: TaskID) -> TaskRequest? {
        let now = clock()
        return state.withLock { state in
            guard let stored = state.tasks[id], stored.expires > now else { return nil }
            return stored.request
        }
    }

    func take(consumer: String, limit: Int, leaseMilliseconds: Int64) -> [TaskClaim] {
        let now = clock()
        return state.withLock { state in
            var claims: [TaskClaim] = []
            let expired = state.held.filter { now - $0.value.since >= leaseMilliseconds }.sorted { Self.order($0.key, $1.key) }
            for (entry, held) in expired.prefix(limit) {
                state.held[entry] = Held(task: held.task, consumer: consumer, since: now)
                claims.append(TaskClaim(task: held.task, entry: entry, takenOver: true))
            }
            while claims.count < limit, state.queueStart < state.queue.count {
                let next = state.queue[state.queueStart]
                state.queueStart += 1
                state.held[next.entry] = Held(task: next.task, consumer: consumer, since: now)
                claims.append(TaskClaim(task: next.task, entry: next.entry, takenOver: false))
            }
            if state.queueStart > 1_024, state.queueStart * 2 > state.queue.count {
                state.queue.removeFirst(state.queueStart)
                state.queueStart = 0
            }
            return claims
        }
    }

    func renew(_ claims: [TaskClaim], consumer: String) -> [TaskClaim] {
        let now = clock()
        return state.withLock { state in
            claims.filter { claim in
                guard state.held[claim.entry]?.consumer == consumer else { return false }
                state.held[claim.entry]?.since = now
                return true
            }
        }
    }

    func complete(_ claim: TaskClaim) {
        _ = state.withLock { $0.held.removeValue(forKey: claim.entry) }
    }

    func requeue(_ claim: TaskClaim, consumer: String) {
        state.withLock { state in
            guard state.held[claim.entry]?.consumer == consumer else { return }
            state.held[claim.entry] = nil
            state.queue.append((entry: String(state.nextEntry), task: claim.task))
            state.nextEntry += 1
        }
    }

    func list(status: TaskStatus?, partner: String?, limit: Int) -> [TaskRecord] {
        let now = clock()
        return state.withLock { state in
            state.tasks.values
                .filter { $0.expires > now && (status == nil || $0.record.lifecycle.status == status) && (partner == nil || $0.record.partner == partner) }
                .map(\.record)
                .sorted { ($0.lifecycle.createdAt, $0.id.text) > ($1.lifecycle.createdAt, $1.id.text) }
                .prefix(limit)
                .map { $0 }
        }
    }

    func census() -> TaskCensus {
        let now = clock()
        return state.withLock { state in
            var counts: [TaskStatus: Int] = [:]
            var oldestQueuedAt: Int64?
            var byRoute: [String: Int64] = [:]
            for stored in state.tasks.values where stored.expires > now {
                let lifecycle = stored.record.lifecycle
                counts[lifecycle.status, default: 0] += 1
                if lifecycle.status == .queued {
                    oldestQueuedAt = min(oldestQueuedAt ?? lifecycle.updatedAt, lifecycle.updatedAt)
                    byRoute[stored.record.route] = min(byRoute[stored.record.route] ?? lifecycle.updatedAt, lifecycle.updatedAt)
                }
            }
            return TaskCensus(counts: counts, oldestQueuedAt: oldestQueuedAt, oldestQueuedAtByRoute: byRoute)
        }
    }

    /// Entry ids are counters: shorter ones are older.
    private static func order(_ left: String, _ right: String) -> Bool {
        (left.count, left) < (right.count, right)
    }

    /// Drops expired tasks every so many accepts, so finished ones do not pile up.
    private static func sweepNowAndThen(_ state: inout State, now: Int64) {
        state.writesSinceSweep += 1
        guard state.writesSinceSweep >= 4_096 else { return }
        state.writesSinceSweep = 0
        state.tasks = state.tasks.filter { $0.value.expires > now }
        state.messages = state.messages.filter { $0.value.expires > now }
        state.voided = state.voided.filter { $0.value > now }
        state.fingerprints = state.fingerprints.filter { $0.value.expires > now }
    }
}

extension MemoryStore: TaskStore {
    public func acceptTask(
        _ record: TaskRecord, request: TaskRequest, retention: Duration, dedupe: TaskDedupe?, on eventLoop: any EventLoop,
        completion: @escaping (Result<TaskAcceptOutcome, any Error>) -> Void
    ) {
        completion(.success(tasks.accept(record, request: request, retentionMilliseconds: retention.milliseconds, dedupe: dedupe)))
    }

    public func newTaskID(for dedupe: TaskDedupe?) -> TaskID { TaskID.random() }

    public func resolveAccept(
        _ id: TaskID, withdraw: Bool, on eventLoop: any EventLoop, completion: @escaping (Result<AcceptResolution, any Error>) -> Void
    ) {
        completion(.success(tasks.resolveAccept(id, withdraw: withdraw)))
    }

    public func task(_ id: TaskID, _ read: TaskRead, on eventLoop: any EventLoop, completion: @escaping (Result<TaskRecord?, any Error>) -> Void) {
        completion(.success(tasks.task(id).map { read == .status ? $0.withoutResult : $0 }))
    }

    public func replaceTask(
        _ record: TaskRecord, from revision: Int, retention: Duration, notify: WebhookMessage?, on eventLoop: any EventLoop,
        completion: @escaping (Result<Bool, any Error>) -> Void
    ) {
        completion(.success(tasks.replace(record, from: revision, retentionMilliseconds: retention.milliseconds, notify: notify)))
    }

    public func taskRequest(_ id: TaskID) async throws -> TaskRequest? { tasks.request(id) }

    public func takeTasks(consumer: String, limit: Int, lease: Duration) async throws -> [TaskClaim] {
        tasks.take(consumer: consumer, limit: limit, leaseMilliseconds: lease.milliseconds)
    }

    public func renewTasks(_ claims: [TaskClaim], consumer: String) async throws -> [TaskClaim] {
        tasks.renew(claims, consumer: consumer)
    }

    public func completeEntry(_ claim: TaskClaim) async throws { tasks.complete(claim) }

    public func requeue(_ claim: TaskClaim, consumer: String) async throws { tasks.requeue(claim, consumer: consumer) }

    public func listTasks(status: TaskStatus?, partner: String?, limit: Int) async throws -> [TaskRecord] {
        tasks.list(status: status, partner: partner, limit: limit).map(\.withoutResult)
    }

    public func taskCensus(retention: Duration) async throws -> TaskCensus { tasks.census() }
}

extension MemoryStore: WebhookStore {
    public func takeDueWebhooks(limit: Int, lease: Duration) async throws -> [WebhookMessage] {
        tasks.takeDueMessages(limit: limit, leaseMilliseconds: lease.milliseconds)
    }

    public func rescheduleWebhook(_ message: WebhookMessage, after delay: Duration, retention: Duration) async throws {
        tasks.reschedule(message, afterMilliseconds: delay.milliseconds, retentionMilliseconds: retention.milliseconds)
    }

    public func webhookDelivered(_ message: WebhookMessage) async throws { tasks.delivered(message) }

    public func buryWebhook(_ message: WebhookMessage, retention: Duration) async throws {
        tasks.bury(message, retentionMilliseconds: retention.milliseconds)
    }

    public func deadWebhooks(partner: String?, limit: Int) async throws -> [WebhookMessage] {
        tasks.deadMessages(partner: partner, limit: limit)
    }

    public func redriveWebhook(id: String, retention: Duration) async throws -> Bool {
        tasks.redrive(id: id, retentionMilliseconds: retention.milliseconds)
    }

    public func deadWebhookCount(retention: Duration) async throws -> Int {
        tasks.deadMessageCount()
    }
}
