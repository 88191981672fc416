public import NIOCore
public import SluiceCore

/// A queue entry a worker holds: the task to run and the entry that stands for it in the queue.
public struct TaskClaim: Sendable, Hashable {
    public let task: TaskID
    /// The store's id of the queue entry (a stream entry id in Redis).
    public let entry: String
    /// The entry was held by a worker whose lease ran out (it died, or stalled past the lease).
    public let takenOver: Bool

    public init(task: TaskID, entry: String, takenOver: Bool) {
        self.task = task
        self.entry = entry
        self.takenOver = takenOver
    }
}

/// What became of an accept whose answer was lost (`TaskStore.resolveAccept`).
public enum AcceptResolution: String, Sendable, Equatable {
    /// It went through: the task is stored.
    case stored
    /// It did not, and never will: a late accept of the id is refused.
    case voided
    /// It went through and was taken back (asked to withdraw; nothing had touched it).
    case withdrawn
    /// It went through and the task has moved on since (started, cancelled): it stays.
    case moved
}

/// How much of a task a read returns.
public enum TaskRead: Sendable {
    /// Status, times, attempts and history: never the result.
    case status
    /// The same and, once the task finished, its result (a partner's poll, `sluice tasks show`).
    case statusAndResult
}

/// The tasks in a store by status (`sluice_tasks{status}`, `sluice_task_queue_oldest_seconds`).
public struct TaskCensus: Sendable, Equatable {
    /// Tasks per status; every status is present.
    public var counts: [TaskStatus: Int]
    /// When the queued task that has waited longest entered the queue (epoch ms); nil when none is queued.
    public var oldestQueuedAt: Int64?
    /// The same per route, for the routes that have queued tasks (on Redis: among the
    /// `TaskCensus.routeScanLimit` longest-waiting tasks of each shard).
    public var oldestQueuedAtByRoute: [String: Int64]

    /// How many of a shard's longest-waiting queued tasks a Redis census reads for their routes.
    public static let routeScanLimit = 64

    public init(counts: [TaskStatus: Int] = [:], oldestQueuedAt: Int64? = nil, oldestQueuedAtByRoute: [String: Int64] = [:]) {
        self.counts = TaskStatus.allCases.reduce(into: [:]) { $0[$1] = counts[$1] ?? 0 }
        self.oldestQueuedAt = oldestQueuedAt
        self.oldestQueuedAtByRoute = oldestQueuedAtByRoute
    }
}

/// Durable async tasks (SPEC §3): task records, the requests they run, and a queue that every
/// gateway instance's workers take from. A taken entry is leased to its worker; a worker renews
/// its leases while it runs, and an entry not renewed for a lease is taken over by another worker
/// (its task record says whether there is anything left to do). Records change only by compare
/// and set on their revision (`replaceTask`), so transitions never race. Every key expires
/// after the task retention.
///
/// The partner-facing operations (accept, read, replace) take an event loop, are called on it
/// and complete there, exactly once, like the admission and idempotency stores; the workers' operations are async.
public protocol TaskStore: Sendable {
    /// Stores a new task and its request and enqueues it, in one atomic step (nothing is half
    /// written). Completes with `.refused`, changing nothing, when a task with that id exists.
    /// With `dedupe`, decided in the same step: while an identical request's task is queued or
    /// running, or succeeded no longer than `dedupe.window` after its accept, nothing is stored
    /// and the answer is `.duplicate(of:)` that task; else the task is stored and becomes the one
    /// identical requests get. The record's id must then come from `newTaskID(for:)`.
    func acceptTask(
        _ record: TaskRecord, request: TaskRequest, retention: Duration, dedupe: TaskDedupe?, on eventLoop: any EventLoop,
        completion: @escaping (Result<TaskAcceptOutcome, any Error>) -> Void
    )

    /// A fresh id for a task accepted with `dedupe` (the store may need it where the
    /// fingerprint lives).
    func newTaskID(for dedupe: TaskDedupe?) -> TaskID

    /// Settles an accept whose answer was lost (a timeout or a dropped connection: it may or may
    /// not have been applied). A task that is not stored is voided: a late accept of the id is
    /// refused from now on. With `withdraw`, a stored task that nothing has touched yet (still
    /// queued, at its first revision) is removed again, as if it had never been accepted.
    func resolveAccept(
        _ id: TaskID, withdraw: Bool, on eventLoop: any EventLoop, completion: @escaping (Result<AcceptResolution, any Error>) -> Void
    )

    /// The task with this id, nil when there is none (or it expired); its result only when
    /// `read` asks for it (a result may be megabytes: a poll of an unfinished task, a cancel, a
    /// worker and a listing never read it).
    func task(_ id: TaskID, _ read: TaskRead, on eventLoop: any EventLoop, completion: @escaping (Result<TaskRecord?, any Error>) -> Void)

    /// Replaces a task with `record` when the stored one is still at `revision`; completes with
    /// false (changing nothing) otherwise. A finished task's request is dropped with it, and
    /// `notify` (its webhook event) is scheduled in the same step, due at once.
    func replaceTask(
        _ record: TaskRecord, from revision: Int, retention: Duration, notify: WebhookMessage?, on eventLoop: any EventLoop,
        completion: @escaping (Result<Bool, any Error>) -> Void
    )

    /// The request a task runs; nil once the task finished (or expired).
    func taskRequest(_ id: TaskID) async throws -> TaskRequest?

    /// Takes up to `limit` queue entries for `consumer`: first entries whose holder has not
    /// renewed them for `lease` (every worker passes `tasks.lease`), then new ones.
    func takeTasks(consumer: String, limit: Int, lease: Duration) async throws -> [TaskClaim]

    /// Renews the entries `consumer` still holds (their lease starts again); returns those (a
    /// claim missing from the answer was taken over by another worker, which now owns the run).
    func renewTasks(_ claims: [TaskClaim], consumer: String) async throws -> [TaskClaim]

    /// Removes a held entry from the queue (its task finished, was cancelled or is gone).
    func completeEntry(_ claim: TaskClaim) async throws

    /// Puts an entry `consumer` holds back at the end of the queue (the instance is shutting
    /// down); nothing happens when it no longer holds it.
    func requeue(_ claim: TaskClaim, consumer: String) async throws

    /// The newest tasks first, at most `limit`, optionally only those with `status` or of
    /// `partner` — without their results.
    func listTasks(status: TaskStatus?, partner: String?, limit: Int) async throws -> [TaskRecord]

    /// How many stored tasks are in each status, and since when the longest-waiting queued one
    /// waits (tasks whose last change is older than `retention` have expired and are not counted).
    func taskCensus(retention: Duration) async throws -> TaskCensus

    /// The loop the async forms use.
    var defaultEventLoop: any EventLoop { get }
}

extension TaskStore {
    /// `acceptTask(…, on:, completion:)` on the store's default event loop, without dedupe:
    /// whether the task was stored.
    public func acceptTask(_ record: TaskRecord, request: TaskRequest, retention: Duration) async throws -> Bool {
        try await acceptTask(record, request: request, retention: retention, dedupe: nil) == .accepted
    }

    /// `acceptTask(…, on:, completion:)` on the store's default event loop.
    public func acceptTask(_ record: TaskRecord, request: TaskRequest, retention: Duration, dedupe: TaskDedupe?) async throws -> TaskAcceptOutcome {
        try await defaultEventLoop.run { acceptTask(record, request: request, retention: retention, dedupe: dedupe, on: $0, completion: $1) }
    }

    /// `task(…, on:, completion:)` on the store's default event loop.
    public func task(_ id: TaskID, _ read: TaskRead = .statusAndResult) async throws -> TaskRecord? {
        try await defaultEventLoop.run { task(id, read, on: $0, completion: $1) }
    }

    /// `resolveAccept(…, on:, completion:)` on the store's default event loop.
    public func resolveAccept(_ id: TaskID, withdraw: Bool) async throws -> AcceptResolution {
        try await defaultEventLoop.run { resolveAccept(id, withdraw: withdraw, on: $0, completion: $1) }
    }

    /// `replaceTask(…, on:, completion:)` on the store's default event loop.
    public func replaceTask(_ record: TaskRecord, from revision: Int, retention: Duration, notify: WebhookMessage? = nil) async throws -> Bool {
        try await defaultEventLoop.run { replaceTask(record, from: revision, retention: retention, notify: notify, on: $0, completion: $1) }
    }
}

/// Webhook messages waiting to be sent, and the dead-letter queue (SPEC §3 Webhooks). A message
/// is scheduled with its task's last transition (`TaskStore.replaceTask(…notify:)`); senders in
/// every instance take the due ones, each held for a lease while one sender tries it, so a
/// message is sent by one instance at a time and a sender that dies only delays it.
public protocol WebhookStore: Sendable {
    /// Messages due now, at most `limit`, each held (not due for anyone else) for `lease`.
    func takeDueWebhooks(limit: Int, lease: Duration) async throws -> [WebhookMessage]

    /// Stores the message as it is now (attempts, last error) and makes it due after `delay`.
    func rescheduleWebhook(_ message: WebhookMessage, after delay: Duration, retention: Duration) async throws

    /// Drops a delivered message.
    func webhookDelivered(_ message: WebhookMessage) async throws

    /// Moves a message to the dead-letter queue (with its last error), kept for `retention`.
    func buryWebhook(_ message: WebhookMessage, retention: Duration) async throws

    /// Dead messages, newest first, optionally of one partner.
    func deadWebhooks(partner: String?, limit: Int) async throws -> [WebhookMessage]

    /// Makes a dead message due now with its attempts starting over; false when no dead message has that id.
    func redriveWebhook(id: String, retention: Duration) async throws -> Bool

    /// How many messages are dead now (those buried longer than `retention` ago are gone).
    func deadWebhookCount(retention: Duration) async throws -> Int
}

extension EventLoop {
    /// Runs a completion-style store operation on this loop and awaits its result.
    func run<Value: Sendable>(_ operation: @escaping @Sendable (any EventLoop, @escaping (Result<Value, any Error>) -> Void) -> Void) async throws -> Value {
        try await flatSubmit {
            let promise = self.makePromise(of: Value.self)
            operation(self) { promise.completeWith($0) }
            return promise.futureResult
        }.get()
    }
}
