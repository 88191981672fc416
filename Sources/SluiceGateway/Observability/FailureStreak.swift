import Logging

/// One background loop's trouble with the store (task workers, webhook sender, lease renewal,
/// usage flush): every failed call is counted in `sluice_store_errors_total`; the first failure
/// after a success is logged (warning, with the error) and so is the first success after
/// failures (notice, with how many failed) — one line when trouble starts and one when it ends,
/// not one per polling round. Used from one task at a time.
struct FailureStreak {
    /// Names the loop in the log lines (`task workers`).
    let loop: String
    let logger: Logger
    let metrics: GatewayMetrics
    private(set) var failures = 0

    init(_ loop: String, logger: Logger, metrics: GatewayMetrics) {
        self.loop = loop
        self.logger = logger
        self.metrics = metrics
    }

    /// Runs `call`; its result, or nil when it failed (counted and, at the start of a streak, logged).
    @discardableResult
    mutating func attempt<Value>(_ what: String, _ call: () async throws -> Value) async -> Value? {
        do {
            let value = try await call()
            succeeded()
            return value
        } catch {
            failed(what, error)
            return nil
        }
    }

    mutating func failed(_ what: String, _ error: any Error) {
        metrics.storeFailed()
        failures += 1
        guard failures == 1 else { return }
        logger.warning("\(loop): store calls are failing; retrying", metadata: ["loop": .string(loop), "call": .string(what), "error": .string("\(error)")])
    }

    mutating func succeeded() {
        guard failures > 0 else { return }
        logger.notice("\(loop): store calls work again", metadata: ["loop": .string(loop), "failed_calls": .stringConvertible(failures)])
        failures = 0
    }
}
