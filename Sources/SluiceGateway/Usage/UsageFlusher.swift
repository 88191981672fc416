import Logging
import ServiceLifecycle
import SluiceCore
import SluiceStore

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
