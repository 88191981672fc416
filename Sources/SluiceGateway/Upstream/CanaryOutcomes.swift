import Logging
import SluiceCore

extension GatewayRuntime {
    /// A call of `route` on its canary ended (`failed`: a 5xx or a timeout the partner sees):
    /// counted toward `abort_on`; the call that passes it aborts the canary, logged and counted.
    func canaryCallEnded(_ canary: CanarySplit, route: String, failed: Bool) {
        guard canary.record(failed: failed), let rule = canary.policy.abortOn else { return }
        metrics.canaryAborted(route: route)
        logger.warning(
            "canary aborted: its calls go to the route's upstream until a policy reload",
            metadata: [
                "route": .string(route), "canary_upstream": .string(canary.upstream.name),
                "error_rate_limit": .stringConvertible(rule.errorRate), "min_calls": .stringConvertible(rule.minCalls),
            ]
        )
    }
}
