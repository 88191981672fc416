public import NIOCore
public import SluiceCore

/// What the gateway keeps in a store for admission control (rate, quota and concurrency).
/// Idempotency records, tasks, webhooks and usage get protocols of their own next to this one,
/// implemented by the same two stores.
///
/// The request path calls the event-loop forms: a decision is handed to a completion on the
/// caller's event loop (the embedded store at once, Redis when its reply is in), with no task,
/// no future and no thread hop. The future and async forms are for everything else (tests,
/// tools); the async ones use one fixed loop, so a release and a later admission made through
/// them see each other.
public protocol AdmissionStore: Sendable {
    /// Decides for one request and, when it is admitted, takes its tokens, one unit of quota
    /// and (given a lease id and a concurrency limit) a concurrency slot — in one atomic step.
    /// Call on `eventLoop`; `completion` runs there, exactly once.
    func admit(
        partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<AdmissionDecision, any Error>) -> Void
    )

    /// Hands a concurrency slot back; call on `eventLoop` (the loop that admitted it). Returns at
    /// once; the store applies it soon.
    func release(partner: String, lease: String, on eventLoop: any EventLoop)

    /// The loop the async forms use.
    var defaultEventLoop: any EventLoop { get }

    /// Applies releases that are still queued; throws when some could not be applied (they stay
    /// queued for the next call).
    func flushReleases() async throws

    /// Extends the leases this instance still holds, so that only a crashed instance's leases expire.
    func renew(partner: String, leases: [String], leaseDuration: Duration) async throws
}

extension AdmissionStore {
    /// `admit(…, on:, completion:)` as a future that completes on `eventLoop`. Call on `eventLoop`.
    public func admit(
        partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration, on eventLoop: any EventLoop
    ) -> EventLoopFuture<AdmissionDecision> {
        let promise = eventLoop.makePromise(of: AdmissionDecision.self)
        admit(partner: partner, limits: limits, lease: lease, leaseDuration: leaseDuration, on: eventLoop) { promise.completeWith($0) }
        return promise.futureResult
    }

    /// `admit(…, on:)` on the store's default event loop.
    public func admit(partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration) async throws -> AdmissionDecision {
        let eventLoop = defaultEventLoop
        return try await eventLoop.flatSubmit {
            admit(partner: partner, limits: limits, lease: lease, leaseDuration: leaseDuration, on: eventLoop)
        }.get()
    }

    /// `release(…, on:)` on the store's default event loop.
    public func release(partner: String, lease: String) {
        let eventLoop = defaultEventLoop
        eventLoop.execute { release(partner: partner, lease: lease, on: eventLoop) }
    }
}

/// Milliseconds since 1970, the time admission decisions use.
public typealias EpochClock = @Sendable () -> Int64
