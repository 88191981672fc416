public import NIOCore
public import SluiceCore

/// What a claim on an idempotency key found (SPEC §3 Idempotency).
public enum IdempotencyClaim: Sendable, Equatable {
    /// The key is this request's now: run it, then `record` or `releaseClaim`.
    case claimed
    /// Another request with the key is running; its claim ends within this many milliseconds.
    case inProgress(retryAfterMilliseconds: Int64)
    /// A request with the key finished: its record, to replay or to compare.
    case completed(IdempotencyRecord)
}

/// Idempotency keys and recorded responses, scoped by partner. Each operation is one atomic
/// step of the store; every entry expires (a claim after its lease, a record after its
/// retention), so a key whose gateway crashed is never stuck. Call on `eventLoop`;
/// `completion` runs there, exactly once.
public protocol IdempotencyStore: Sendable {
    /// Claims `key` for one request, identified by `token`, for `lease` — unless a running
    /// request holds it (its claim not yet expired) or a finished one is recorded.
    func claim(
        partner: String, key: String, token: String, lease: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<IdempotencyClaim, any Error>) -> Void
    )

    /// Replaces the claim `token` holds with `record`, kept for `retention`. Completes with false
    /// when the claim is no longer `token`'s (it expired and another request took the key).
    func record(
        _ record: IdempotencyRecord, partner: String, key: String, token: String, retention: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<Bool, any Error>) -> Void
    )

    /// Drops the claim `token` holds, so that the next request with the key runs. Completes with
    /// false when there was no such claim.
    func releaseClaim(
        partner: String, key: String, token: String, on eventLoop: any EventLoop, completion: @escaping (Result<Bool, any Error>) -> Void
    )

    /// The loop the async forms use.
    var defaultEventLoop: any EventLoop { get }
}

extension IdempotencyStore {
    /// `claim(…, on:, completion:)` on the store's default event loop.
    public func claim(partner: String, key: String, token: String, lease: Duration) async throws -> IdempotencyClaim {
        try await defaultEventLoop.run { claim(partner: partner, key: key, token: token, lease: lease, on: $0, completion: $1) }
    }

    /// `record(…, on:, completion:)` on the store's default event loop.
    public func record(_ record: IdempotencyRecord, partner: String, key: String, token: String, retention: Duration) async throws -> Bool {
        try await defaultEventLoop.run { self.record(record, partner: partner, key: key, token: token, retention: retention, on: $0, completion: $1) }
    }

    /// `releaseClaim(…, on:, completion:)` on the store's default event loop.
    public func releaseClaim(partner: String, key: String, token: String) async throws -> Bool {
        try await defaultEventLoop.run { releaseClaim(partner: partner, key: key, token: token, on: $0, completion: $1) }
    }
}
