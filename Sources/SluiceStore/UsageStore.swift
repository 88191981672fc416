public import SluiceCore

/// Partner usage counts per day (SPEC §6), written in batches by every gateway instance and read
/// by reports. A batch is applied at most once by its id, so a flush retried after an unknown
/// outcome (a timeout) does not count twice.
public protocol UsageStore: Sendable {
    /// Adds every count of `batch`, unless a batch with `batchID` was already added. Each day's
    /// counts are kept until `retention` after the day ends.
    func addUsage(_ batch: UsageBatch, batchID: String, retention: Duration) async throws

    /// The counts of days `from`…`to` (inclusive), of one partner or of all.
    func usage(from: UsageDay, to: UsageDay, partner: String?) async throws -> UsageBatch
}

extension UsageDay {
    /// When a day's counts expire: `retention` after the day ends, epoch seconds.
    func expiry(retention: Duration) -> Int64 {
        startEpochSeconds + 86_400 + retention.components.seconds
    }
}
