import ServiceLifecycle

/// Writes buffered log lines (event lines and the loops' access lines) out a few times a
/// second, and once more at the very end.
struct LogFlusher: Service {
    let output: LogOutput
    let accessLog: AccessLog

    func run() async throws {
        while await pauseUnlessShuttingDown(for: .milliseconds(200)) {
            await accessLog.flush()
            output.flush()
        }
        await accessLog.flush()
        output.flush()
    }
}
