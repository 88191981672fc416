import Logging
import NIOCore
import NIOHTTP1
import SluiceCore
import SluiceStore

/// Stage 4 of the request path for one policy snapshot (SPEC §3 Idempotency): claims a keyed
/// request's key in the store after admission (in the admission's own call when the shared store
/// decides it), records its final response, or gives the claim up. Claims, records and releases
/// are one store step each, answered on the request's loop.
struct IdempotencyControl: Sendable {
    let store: any IdempotencyStore
    /// How long a recorded response is replayed (`idempotency.retention`).
    let retention: Duration
    /// A claim outlives the route's deadline by this much, so that only a crashed gateway's
    /// claim expires (a running request's is renewed: `held`).
    let leaseMargin: Duration
    /// The claims this instance's running requests hold, renewed until they are concluded.
    let held: HeldRegistry<HeldClaim>
    let metrics: GatewayMetrics
    let logger: Logger

    /// The longest `Retry-After` a 409 suggests: the first request may end any moment.
    static let longestRetryHint = 5

    /// What to claim for `request` on a route with this timeout.
    func claimRequest(_ request: IdempotentRequest, routeTimeout: Duration) -> IdempotencyClaimRequest {
        IdempotencyClaimRequest(key: request.key, token: request.token, lease: routeTimeout + leaseMargin)
    }

    /// `request` won its claim: it is renewed while the request runs. Call on `eventLoop`.
    func claimWon(_ request: IdempotentRequest, partner: String, routeTimeout: Duration, on eventLoop: any EventLoop) {
        request.phase = .claimed
        held.add(request.token, HeldClaim(partner: partner, claim: claimRequest(request, routeTimeout: routeTimeout)), on: eventLoop)
    }

    /// Claims `request`'s key for its run on its own (when admission did not). Call on
    /// `eventLoop`; `completion` runs there.
    func claim(
        _ request: IdempotentRequest, partner: String, routeTimeout: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<IdempotencyClaim, any Error>) -> Void
    ) {
        let claim = claimRequest(request, routeTimeout: routeTimeout)
        store.claim(partner: partner, key: claim.key, token: claim.token, lease: claim.lease, on: eventLoop) { result in
            if case .failure = result { metrics.storeFailed() }
            completion(result)
        }
    }

    /// Ends a claimed request's claim: records its response when it is final and replayable (the
    /// whole request and response went through, status below 500), else releases the key.
    /// Returns what the access log says.
    func conclude(_ request: IdempotentRequest, partner: String, completed: Bool, requestID: String, on eventLoop: any EventLoop) -> IdempotencyResult? {
        guard case .claimed = request.phase else { return nil }
        request.phase = .concluded
        held.remove(request.token, on: eventLoop)
        let (key, token) = (request.key, request.token)
        if completed, let capture = request.capture, capture.status < 500, let body = request.bodyDigest {
            let record = capture.record(RequestFingerprint(target: request.target, body: body))
            store.record(record, partner: partner, key: key, token: token, retention: retention, on: eventLoop) { result in
                switch result {
                case .success(true): break
                case .success(false):
                    logger.warning("idempotency claim expired before the response was recorded", metadata: ["request_id": .string(requestID)])
                case .failure(let error):
                    metrics.storeFailed()
                    logger.warning(
                        "could not record the response of a keyed request; its key stays claimed until the lease ends",
                        metadata: ["request_id": .string(requestID), "error": .string("\(error)")]
                    )
                }
            }
            return nil
        }
        metrics.idempotency(.released)
        store.releaseClaim(partner: partner, key: key, token: token, on: eventLoop) { result in
            if case .failure(let error) = result {
                metrics.storeFailed()
                logger.warning(
                    "could not release an idempotency claim; it ends with its lease",
                    metadata: ["request_id": .string(requestID), "error": .string("\(error)")]
                )
            }
        }
        return .released
    }

    /// Records `answer` (a task's 202) as the response of `request`'s key: the task it became
    /// exists, whatever the request's own answer was (a 503 when the accept's answer was lost,
    /// none when the client left), so a retry with the key replays it.
    func recordAnswer(
        _ request: IdempotentRequest, status: Int, headers: HTTPHeaders, body: ByteBuffer, partner: String, requestID: String, on eventLoop: any EventLoop
    ) {
        request.responseStarted(status: status, headers: headers)
        request.responseBodyArrived(body)
        _ = conclude(request, partner: partner, completed: true, requestID: requestID, on: eventLoop)
    }

    /// The whole seconds a 409 suggests to wait.
    static func retryAfter(milliseconds: Int64) -> Int {
        max(1, min(longestRetryHint, Int((milliseconds + 999) / 1_000)))
    }
}
