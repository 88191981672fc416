import ServiceLifecycle

/// Hands the loops' buffered access lines to the log output a few times a second, counts the
/// lines the output dropped (`sluice_log_lines_dropped_total`), and at the very end waits (a
/// few seconds at most) until everything is written.
struct LogFlusher: Service {
    let output: LogOutput
    let accessLog: AccessLog
    let metrics: GatewayMetrics

    func run() async throws {
        var counted = 0
        func countDropped() {
            let dropped = output.droppedLines
            if dropped > counted { metrics.logLinesDropped(dropped - counted) }
            counted = dropped
        }
        while await pauseUnlessShuttingDown(for: .milliseconds(200)) {
            await accessLog.flush()
            countDropped()
        }
        await accessLog.flush()
        output.flush()
        countDropped()
    }
}
