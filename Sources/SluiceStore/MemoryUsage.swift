public import SluiceCore
import Synchronization

/// The embedded store's usage counts: one table under a lock (written once a second per flush,
/// read by reports; never on the request path).
final class UsageTable: Sendable {
    private struct State {
        var counts: UsageBatch = [:]
        /// Applied batch ids → when they may be forgotten (epoch ms).
        var batches: [String: Int64] = [:]
    }

    private let state = Mutex(State())
    private let clock: EpochClock

    init(clock: @escaping EpochClock) { self.clock = clock }

    func add(_ batch: UsageBatch, batchID: String, retention: Duration) {
        let now = clock()
        state.withLock { state in
            state.batches = state.batches.filter { $0.value > now }
            guard state.batches.updateValue(now + 86_400_000, forKey: batchID) == nil else { return }
            state.counts.merge(usage: batch)
            state.counts = state.counts.filter { $0.key.day.expiry(retention: retention) * 1_000 > now }
        }
    }

    func usage(from: UsageDay, to: UsageDay, partner: String?) -> UsageBatch {
        state.withLock { state in
            state.counts.filter { $0.key.day >= from && $0.key.day <= to && (partner == nil || $0.key.partner == partner) }
        }
    }
}

extension MemoryStore: UsageStore {
    public func addUsage(_ batch: UsageBatch, batchID: String, retention: Duration) async throws {
        usageTable.add(batch, batchID: batchID, retention: retention)
    }

    public func usage(from: UsageDay, to: UsageDay, partner: String?) async throws -> UsageBatch {
        usageTable.usage(from: from, to: to, partner: partner)
    }
}
