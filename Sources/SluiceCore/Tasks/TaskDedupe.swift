public import Foundation

/// What makes two async requests the same task (SPEC §9 Dedupe, a route's `dedupe:`): the same
/// partner, method, path, query and body. The store keeps one fingerprint per shard and decides
/// atomically whether an accept is a duplicate.
public struct TaskDedupe: Sendable, Hashable {
    /// Hex SHA-256 of partner, method, path with query, and the body's SHA-256.
    public let fingerprint: String
    /// How long after its accept a succeeded task still answers an identical request (a queued or
    /// running one always does).
    public let window: Duration

    public init(fingerprint: String, window: Duration) {
        self.fingerprint = fingerprint
        self.window = window
    }

    /// The dedupe of one request. Each part is length-prefixed, so no two different requests
    /// share their bytes (a partner cannot shape a path that reads as another partner's request).
    public init(partner: String, method: String, pathAndQuery: String, body: some DataProtocol, window: Duration) {
        var digest = PartsDigest()
        for part in [partner, method, pathAndQuery] { digest.add(part) }
        digest.addDigest(of: body)
        self.init(fingerprint: digest.hex(), window: window)
    }

    /// The queue shard (0..<`count`) of the fingerprint: a deduplicated task lives there, beside
    /// its fingerprint, so one store step sees both (`TaskID.random(inShard:of:)`).
    public func shard(of count: Int) -> Int {
        TaskID.fnv1a(fingerprint.utf8) % count
    }
}

/// What became of an accept (`TaskStore.acceptTask`).
public enum TaskAcceptOutcome: Sendable, Equatable {
    /// The task is stored and queued.
    case accepted
    /// Nothing was stored: a task with the id exists, or the id was voided.
    case refused
    /// Nothing was stored: an identical request's task is queued, running, or succeeded within
    /// the window.
    case duplicate(of: TaskID)
}
