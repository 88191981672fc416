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
    func reload(reason: String) -> Outcome {
        do {
            let policy = try PolicyLoader.load(directory: directory, environment: environment)
            let snapshot = try factory.make(policy)
            let previous = runtime.snapshots.store(snapshot)
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

/// Reloads the policies when a file in the folder changes (checked every `interval`) and on SIGHUP.
struct PolicyWatcher: Service {
    let reloader: PolicyReloader
    let interval: Duration

    func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    for await _ in hangups.cancelOnGracefulShutdown() {
                        reloader.reload(reason: "SIGHUP")
                    }
                }
                group.addTask {
                    var fingerprint = PolicyFolderFingerprint(directory: reloader.directory)
                    while await pauseUnlessShuttingDown(for: interval) {
                        let current = PolicyFolderFingerprint(directory: reloader.directory)
                        if current != fingerprint {
                            fingerprint = current
                            reloader.reload(reason: "files changed")
                        }
                    }
                }
            }
        } onGracefulShutdown: {}
    }
}

/// Names, sizes and modification times of the policy files: changes when any file is
/// written, added, removed or replaced by a rename.
struct PolicyFolderFingerprint: Equatable {
    private var entries: [String: [Int]] = [:]

    init(directory: String) {
        let manager = FileManager.default
        let base = URL(fileURLWithPath: directory)
        var paths = PolicySet.requiredFileNames
        let partners = (try? manager.contentsOfDirectory(atPath: base.appendingPathComponent("partners").path)) ?? []
        paths += partners.map { "partners/\($0)" }
        for path in paths {
            var info = stat()
            guard stat(base.appendingPathComponent(path).path, &info) == 0 else { continue }
            entries[path] = [Int(info.st_size), Int(info.st_mtim.tv_sec), Int(info.st_mtim.tv_nsec), Int(info.st_ino)]
        }
    }
}
