import SluiceCore
import SluiceStore

/// What has not reached the store yet: a batch whose write failed (it may or may not have been
/// applied, so it is retried as it is, under its id, and never merged with newer counts) and the
/// counts taken since.
struct UsageBacklog {
    private(set) var inDoubt: (id: String, batch: UsageBatch)?
    private(set) var waiting: UsageBatch = [:]
    private let newID: @Sendable () -> String

    init(newID: @escaping @Sendable () -> String) { self.newID = newID }

    var isEmpty: Bool { inDoubt == nil && waiting.isEmpty }

    mutating func add(_ batch: UsageBatch) { waiting.merge(usage: batch) }

    /// Writes what is pending: the batch in doubt first, then the waiting counts as one new batch.
    /// A failure keeps everything for the next call; returns the error.
    mutating func write(to store: any UsageStore, retention: Duration) async -> (any Error)? {
        if let (id, batch) = inDoubt {
            do {
                try await store.addUsage(batch, batchID: id, retention: retention)
                inDoubt = nil
            } catch {
                return error
            }
        }
        guard !waiting.isEmpty else { return nil }
        let batch = waiting
        let id = newID()
        waiting = [:]
        do {
            try await store.addUsage(batch, batchID: id, retention: retention)
            return nil
        } catch {
            inDoubt = (id, batch)
            return error
        }
    }
}
