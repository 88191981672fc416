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

    /// Extends `partner`'s claims that their tokens still hold to their lease from now, so that
    /// a request that runs (or streams its response) longer than its first lease keeps its key;
    /// claims no longer held are left alone. Returns how many were extended.
    func renewClaims(_ claims: [IdempotencyClaimRequest], partner: String) async throws -> Int

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

/// An idempotency key to claim in the same step as a request's admission.
public struct IdempotencyClaimRequest: Sendable {
    public let key: String
    /// Identifies the request that will hold the claim.
    public let token: String
    public let lease: Duration

    public init(key: String, token: String, lease: Duration) {
        self.key = key
        self.token = token
        self.lease = lease
    }
}

/// An admission decision and, for an admitted request, the claim of its idempotency key.
public struct AdmissionWithClaim: Sendable, Equatable {
    public var decision: AdmissionDecision
    /// nil when the request was not admitted: a refused request claims nothing.
    public var claim: IdempotencyClaim?

    public init(decision: AdmissionDecision, claim: IdempotencyClaim?) {
        self.decision = decision
        self.claim = claim
    }
}

/// A store that decides admission and keeps idempotency keys can do both for one request at
/// once, so a keyed request needs one store step before it runs, like any other (SPEC §3: rate
/// limits first — a refused request claims nothing).
public protocol ClaimingAdmissionStore: AdmissionStore, IdempotencyStore {
    /// `admit(…)`, and when the request is admitted, `claim(…)` of `claiming`. Call on
    /// `eventLoop`; `completion` runs there, exactly once. A failure says nothing about either step.
    func admit(
        partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration, claiming: IdempotencyClaimRequest,
        on eventLoop: any EventLoop, completion: @escaping (Result<AdmissionWithClaim, any Error>) -> Void
    )
}

extension ClaimingAdmissionStore {
    /// Admission, then the claim: two steps, for a store whose steps cost no round trip.
    public func admit(
        partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration, claiming: IdempotencyClaimRequest,
        on eventLoop: any EventLoop, completion: @escaping (Result<AdmissionWithClaim, any Error>) -> Void
    ) {
        admit(partner: partner, limits: limits, lease: lease, leaseDuration: leaseDuration, on: eventLoop) { result in
            guard case .success(let decision) = result, decision.verdict == .admitted else {
                return completion(result.map { AdmissionWithClaim(decision: $0, claim: nil) })
            }
            claim(partner: partner, key: claiming.key, token: claiming.token, lease: claiming.lease, on: eventLoop) { claimed in
                completion(claimed.map { AdmissionWithClaim(decision: decision, claim: $0) })
            }
        }
    }

    /// `admit(…, claiming:, on:, completion:)` on the store's default event loop.
    public func admit(
        partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration, claiming: IdempotencyClaimRequest
    ) async throws -> AdmissionWithClaim {
        try await defaultEventLoop.run {
            admit(partner: partner, limits: limits, lease: lease, leaseDuration: leaseDuration, claiming: claiming, on: $0, completion: $1)
        }
    }
}
