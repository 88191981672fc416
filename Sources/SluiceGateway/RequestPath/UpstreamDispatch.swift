import NIOHTTP1
import SluiceCore

/// Stage 5 of the request path: what the upstream receives of an admitted request — its head
/// rewritten (`HeaderRewriter`), whether it may be sent twice, and how its body travels.
enum UpstreamDispatch {
    /// What the upstream learns about the request besides its own headers (forwarding headers, trace).
    static func forwardingContext(
        _ request: PartnerRequest, _ plan: ForwardPlan, connection: PartnerConnection, traceparent: String
    ) -> ForwardingContext {
        ForwardingContext(
            clientAddress: connection.clientAddress,
            scheme: connection.scheme,
            host: request.head.headers.first(name: "host"),
            partnerID: plan.partner.id,
            version: plan.version.version.name,
            requestID: request.record.requestID,
            traceparent: traceparent,
            fromTrustedProxy: connection.isTrustedProxy(request.snapshot.policy.gateway.listen.trustedProxies)
        )
    }

    /// The head to send to `upstream` and how the body goes with it: small bodies of requests
    /// that may be retried are read whole first (a retry sends them again), others stream. Its
    /// path and `Host` are the first target's; a try on another target changes them (so a
    /// one-target upstream's head is never copied).
    static func prepare(
        _ request: PartnerRequest, _ plan: ForwardPlan, upstream: UpstreamRuntime, connection: PartnerConnection, runtime: GatewayRuntime
    ) -> (head: HTTPRequestHead, retryable: Bool, dispatch: PartnerRequestStateMachine.Dispatch) {
        let head = request.head
        let first = upstream.targets.first?.client
        var upstreamHead = HTTPRequestHead(version: .http1_1, method: head.method, uri: first?.path(for: plan.target) ?? plan.target)
        upstreamHead.headers.reserveCapacity(head.headers.count + 8)
        if let first { upstreamHead.headers.add(name: "Host", value: first.authority) }
        let traceparent = request.tracing.startUpstream(upstream.name, record: request.record, tracing: runtime.tracing, identifiers: runtime.identifiers)
        HeaderRewriter.forwardRequest(head.headers, forwardingContext(request, plan, connection: connection, traceparent: traceparent)) {
            upstreamHead.headers.add(name: $0, value: $1)
        }
        // A request that may go twice is kept for a retry, or for the one try elsewhere when a
        // pool's connection breaks under it.
        let retryable = (upstream.policy.retries.attempts > 0 || upstream.targets.count > 1)
            && RetryRules.mayRetry(method: head.method.rawValue, hasIdempotencyKey: head.headers.contains(name: "idempotency-key"))
        switch plan.bodyLength {
        case .none:
            if head.method == .POST || head.method == .PUT || head.method == .PATCH {
                upstreamHead.headers.add(name: "Content-Length", value: "0")
            }
            return (upstreamHead, retryable, .bodyless)
        case .known(let length):
            upstreamHead.headers.add(name: "Content-Length", value: String(length))
            // Small enough to keep, so that a retry can send it again.
            return (upstreamHead, retryable, retryable && length <= UpstreamCall.replayableBodyLimit ? .collected : .streamed)
        case .unknown:
            upstreamHead.headers.add(name: "Transfer-Encoding", value: "chunked")
            return (upstreamHead, retryable, .streamed)
        }
    }
}
