import Foundation
import Logging
import ServiceLifecycle
import SluiceCore
import UnixSignals

/// Loads the policy folder again and, when it is valid, swaps the new snapshot in for new
/// requests. An invalid set is logged with its problems, counted, and the running set stays.
struct PolicyReloader: Sendable {
    enum Outcome: Sendable {
        case loaded
        case rejected(PolicyErrors)
    }

    let directory: String
    let environment: [String: String]
    let runtime: GatewayRuntime
    let factory: SnapshotFactory

    @discardableResult
    func reload(reason: String) async -> Outcome {
        do {
            let policy = try PolicyLoader.load(directory: directory, environment: environment)
            await factory.pool.resolveNewNames(in: policy)
            // Built under the holder's lock: a change of resolved targets waits, and then
            // builds on this snapshot.
            let previous = try runtime.snapshots.update { _ throws(PolicyErrors) in try factory.make(policy) }
            runtime.policyStatus.withLock { $0 = .init() }
            runtime.metrics.policyReloaded(succeeded: true)
            runtime.logger.info(
                "policies reloaded", metadata: ["reason": .string(reason), "version": .string(policy.versionHash)]
            )
            if previous.policy.gateway.listen != policy.gateway.listen {
                runtime.logger.warning("listen addresses changed; they take effect when the gateway restarts")
            }
            if previous.policy.gateway.tracing != policy.gateway.tracing {
                runtime.logger.warning("tracing settings changed; they take effect when the gateway restarts")
            }
            return .loaded
        } catch {
            runtime.policyStatus.withLock { $0 = .init(lastError: error.problems.map(\.description), lastErrorAt: Date()) }
            runtime.metrics.policyReloaded(succeeded: false)
            runtime.logger.error(
                "policy reload failed; the running policies stay",
                metadata: ["reason": .string(reason), "problems": .array(error.problems.map { .string($0.description) })]
            )
            return .rejected(error)
        }
    }
}
