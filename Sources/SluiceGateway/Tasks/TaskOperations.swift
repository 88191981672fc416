public import Foundation
public import SluiceCore
import SluiceStore

/// What ops do with tasks and the webhook dead-letter queue: one implementation behind the
/// admin API (`GET /admin/tasks`, `GET /admin/webhooks/dead`, `POST /admin/webhooks/dead/{id}/redrive`)
/// and the CLI (`sluice tasks`, `sluice webhooks`). Answers are the JSON documents of `TaskDocument`.
public struct TaskOperations: Sendable {
    /// Why the CLI cannot reach the tasks.
    public enum OpenError: Error, CustomStringConvertible {
        case embeddedStore

        public var description: String {
            "the policies use the embedded store: its tasks live inside the running gateway; "
                + "ask its admin listener (GET /admin/tasks, GET /admin/webhooks/dead) or put the store on Redis"
        }
    }

    let store: any TaskStore & WebhookStore
    /// `tasks.retention`: how long dead letters and redriven messages are kept.
    let retention: Duration
    private let close: @Sendable () async -> Void

    /// Most entries a listing returns.
    public static let maximumListLimit = 1_000

    /// What is wrong with a listing's filters (admin query or CLI flags), or nil.
    public static func listingProblem(partner: String?, limit: Int?) -> String? {
        if let partner, !APIKeyFactory.isValidPartnerID(partner) {
            return "partner must be a partner id (1-64 characters of a-z, A-Z, 0-9, '-' and '_')"
        }
        guard let limit, (1...maximumListLimit).contains(limit) else { return "limit must be a number from 1 to \(maximumListLimit)" }
        return nil
    }

    init(store: any TaskStore & WebhookStore, retention: Duration, close: @escaping @Sendable () async -> Void = {}) {
        self.store = store
        self.retention = retention
        self.close = close
    }

    /// Connects to the Redis store the policies in `directory` name (the CLI's way in).
    /// - Throws: `PolicyErrors` for invalid policies, `OpenError.embeddedStore` without Redis.
    public static func open(policiesDirectory directory: String, environment: [String: String]) throws -> TaskOperations {
        guard let (policy, store, client) = try OpsStore.open(policiesDirectory: directory, environment: environment) else { throw OpenError.embeddedStore }
        return TaskOperations(store: store, retention: policy.gateway.tasks.retention, close: { await client.shutdown() })
    }

    /// Closes the store connection `open` made.
    public func shutdown() async {
        await close()
    }

    /// A task as ops see it (with partner and route); nil when no task has that id.
    public func show(_ id: String) async throws -> Data? {
        guard let id = TaskID(id), let record = try await store.task(id) else { return nil }
        return TaskDocument.operatorView(record)
    }

    /// The newest tasks first, without their results.
    public func list(status: TaskStatus?, partner: String?, limit: Int) async throws -> Data {
        TaskDocument.list(try await store.listTasks(status: status, partner: partner, limit: min(limit, Self.maximumListLimit)))
    }

    /// The dead-letter queue, newest first.
    public func deadWebhooks(partner: String?, limit: Int) async throws -> Data {
        TaskDocument.deadLetters(try await store.deadWebhooks(partner: partner, limit: min(limit, Self.maximumListLimit)))
    }

    /// Makes a dead message due now with a fresh schedule; false when no dead message has that id.
    public func redrive(_ id: String) async throws -> Bool {
        try await store.redriveWebhook(id: id, retention: retention)
    }

    /// Redrives every dead message (of one partner); returns how many.
    public func redriveAll(partner: String?) async throws -> Int {
        var count = 0
        while true {
            let batch = try await store.deadWebhooks(partner: partner, limit: Self.maximumListLimit)
            var redriven = 0
            for message in batch where try await store.redriveWebhook(id: message.id, retention: retention) { redriven += 1 }
            count += redriven
            if batch.count < Self.maximumListLimit || redriven == 0 { return count }
        }
    }
}
