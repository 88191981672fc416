import Foundation
import Logging
import SluiceCore
import Synchronization

/// What every part of a running gateway shares: the current policy snapshot, id generation,
/// metrics, the logger and the drain state.
final class GatewayRuntime: Sendable {
    let snapshots: SnapshotHolder<GatewaySnapshot>
    let identifiers: IdentifierGenerator
    let dates = HTTPDateCache()
    let metrics: GatewayMetrics
    let logger: Logger
    let accessLog: AccessLog
    let usage: UsageCounter
    let tracing: GatewayTracing
    /// What the last failed reload said (cleared by a successful one).
    let policyStatus = Mutex(PolicyStatus())
    private let draining = Atomic<Bool>(false)

    struct PolicyStatus: Sendable {
        var lastError: [String]?
        var lastErrorAt: Date?
    }

    init(
        snapshot: GatewaySnapshot, identifiers: IdentifierGenerator, metrics: GatewayMetrics, logger: Logger, accessLog: AccessLog,
        usage: UsageCounter, tracing: GatewayTracing
    ) {
        self.snapshots = SnapshotHolder(snapshot)
        self.identifiers = identifiers
        self.metrics = metrics
        self.logger = logger
        self.accessLog = accessLog
        self.usage = usage
        self.tracing = tracing
    }

    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    var isDraining: Bool { draining.load(ordering: .relaxed) }

    func beginDraining() { draining.store(true, ordering: .relaxed) }
}
