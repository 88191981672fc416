import Foundation
import Logging
import ServiceLifecycle
import SluiceCore
import UnixSignals

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
                        await reloader.reload(reason: "SIGHUP")
                    }
                }
                group.addTask {
                    var fingerprint = PolicyFolderFingerprint(directory: reloader.directory)
                    while await pauseUnlessShuttingDown(for: interval) {
                        let current = PolicyFolderFingerprint(directory: reloader.directory)
                        if current != fingerprint {
                            fingerprint = current
                            await reloader.reload(reason: "files changed")
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
