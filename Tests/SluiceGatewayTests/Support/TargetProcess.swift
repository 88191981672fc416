import Foundation
import TestSupport

/// A demo upstream in its own process (`sluice demo-upstream`) on a fixed loopback port, so a
/// test can kill it, stop it (SIGSTOP: it accepts connections and never answers) and start it
/// again on the same port — what an upstream pool must survive.
final class TargetProcess {
    let port: Int
    private var process: ChildProcess?

    var url: String { "http://127.0.0.1:\(port)" }
    /// The target's label in metrics, logs and the admin API.
    var label: String { url }

    init() throws {
        port = try freePort()
    }

    /// Starts the process and waits until it listens.
    func start() async throws {
        let process = try SluiceProcess.start(["demo-upstream", "--port", String(port)])
        self.process = process
        try await eventually("the demo upstream on \(port) listens") { process.standardOutput.contains("listening on") }
    }

    /// SIGKILL, and waits until the process is gone.
    func kill() async throws {
        guard let process else { return }
        process.signal(SIGKILL)
        _ = try await process.exitCode()
        self.process = nil
    }

    func stop() { process?.signal(SIGSTOP) }
    func resume() { process?.signal(SIGCONT) }

    deinit {
        process?.signal(SIGCONT)
        process?.signal(SIGKILL)
    }
}
