public import SluiceCore

/// What the gateway keeps in a store for admission control (rate, quota and concurrency).
/// Idempotency records, tasks, webhooks and usage get protocols of their own next to this one,
/// implemented by the same two stores.
public protocol AdmissionStore: Sendable {
    /// Decides for one request and, when it is admitted, takes its tokens, one unit of quota
    /// and (given a lease id and a concurrency limit) a concurrency slot — in one atomic step.
    func admit(partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration) async throws -> AdmissionDecision

    /// Hands a concurrency slot back. Returns at once; the store applies it soon.
    func release(partner: String, lease: String)

    /// Applies releases that are still queued.
    func flushReleases() async

    /// Extends the leases this instance still holds, so that only a crashed instance's leases expire.
    func renew(partner: String, leases: [String], leaseDuration: Duration) async throws
}

/// Milliseconds since 1970, the time admission decisions use.
public typealias EpochClock = @Sendable () -> Int64
