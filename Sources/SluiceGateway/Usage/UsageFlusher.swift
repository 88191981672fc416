import Logging
import ServiceLifecycle
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

/// Writes the usage counters to the store about once a second, in one batch per flush; a failed
/// write is kept and retried on the next tick; the last counts are written at shutdown (the
/// flusher stops after the listeners, so every request has been counted).
struct UsageFlusher: Service {
    let counter: UsageCounter
    let runtime: GatewayRuntime
    let interval: Duration

    func run() async throws {
        var backlog = UsageBacklog(newID: { [identifiers = runtime.identifiers] in identifiers.requestID() })
        var trouble = FailureStreak("usage flush", logger: runtime.logger, metrics: runtime.metrics)
        while await pauseUnlessShuttingDown(for: interval) {
            backlog.add(await counter.take())
            await flush(&backlog, &trouble)
        }
        backlog.add(await counter.take())
        for _ in 0..<3 where !backlog.isEmpty {
            if await !flush(&backlog, &trouble) { try? await Task.sleep(for: .milliseconds(200)) }
        }
        if !backlog.isEmpty {
            runtime.logger.error("usage counts lost at shutdown: the store did not take them", metadata: ["partners": "\(Set(backlog.waiting.keys.map(\.partner)).sorted())"])
        }
    }

    /// One write of what is pending (kept for the next one when it fails); returns whether it worked.
    @discardableResult
    private func flush(_ backlog: inout UsageBacklog, _ trouble: inout FailureStreak) async -> Bool {
        guard !backlog.isEmpty else { return true }
        let snapshot = runtime.snapshots.load()
        if let error = await backlog.write(to: snapshot.store, retention: snapshot.policy.gateway.usage.retention) {
            trouble.failed("write usage counts", error)
            return false
        }
        trouble.succeeded()
        return true
    }
}
