import Foundation
import HTTPTypes
import Logging
import SluiceCore
import Synchronization

/// What every part of a running gateway shares: the current policy snapshot, id generation,
/// metrics, the logger and the drain state.
final class GatewayRuntime: Sendable {
    let snapshots: SnapshotHolder<GatewaySnapshot>
    let identifiers = IdentifierGenerator()
    let dates = HTTPDateCache()
    let metrics: GatewayMetrics
    let logger: Logger
    /// What the last failed reload said (cleared by a successful one).
    let policyStatus = Mutex(PolicyStatus())
    private let draining = Atomic<Bool>(false)

    struct PolicyStatus: Sendable {
        var lastError: [String]?
        var lastErrorAt: Date?
    }

    init(snapshot: GatewaySnapshot, metrics: GatewayMetrics, logger: Logger) {
        self.snapshots = SnapshotHolder(snapshot)
        self.metrics = metrics
        self.logger = logger
    }

    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    var isDraining: Bool { draining.load(ordering: .relaxed) }

    func beginDraining() { draining.store(true, ordering: .relaxed) }
}

extension HTTPField.Name {
    static let xRequestID = Self("X-Request-Id")!
    static let apiVersion = Self("API-Version")!
    static let deprecation = Self("Deprecation")!
    static let sunset = Self("Sunset")!
    static let traceparent = Self("traceparent")!
    static let rateLimitPolicy = Self("RateLimit-Policy")!
    static let rateLimit = Self("RateLimit")!
    static let idempotencyKey = Self("Idempotency-Key")!
    static let xAPIKey = Self("X-API-Key")!
}
