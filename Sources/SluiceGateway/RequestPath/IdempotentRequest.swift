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

/// One keyed request's idempotency state, filled in as the request moves: its key and target
/// digest from the head, the body's digest as the body streams (hashed, never kept), the claim,
/// and the response as it streams back (kept up to `IdempotencyRecord.maxBody`).
final class IdempotentRequest {
    enum Phase {
        /// Waiting for admission or for the store's answer.
        case unclaimed
        /// This request holds the key.
        case claimed
        /// A finished request with this key and target: the body's digest decides between replay and 422.
        case comparing(IdempotencyRecord)
        /// Recorded, released, or answered without a claim.
        case concluded
    }

    let key: String
    /// Identifies this request's claim in the store.
    let token: String
    let target: SHA256Digest
    var phase = Phase.unclaimed
    private var hasher = BodyHasher()
    /// Set when the request body ended.
    private(set) var bodyDigest: SHA256Digest?
    /// The response of a claimed request, as it streams.
    private(set) var capture: ResponseCapture?

    init(key: String, token: String, method: String, target: String) {
        self.key = key
        self.token = token
        self.target = RequestFingerprint.target(method: method, pathAndQuery: target)
    }

    func bodyArrived(_ chunk: ByteBuffer) {
        chunk.withUnsafeReadableBytes { hasher.update($0) }
    }

    func bodyEnded() {
        bodyDigest = hasher.finalize()
    }

    /// Starts keeping a claimed request's response.
    func responseStarted(status: Int, headers: HTTPHeaders) {
        guard case .claimed = phase else { return }
        capture = ResponseCapture(status: status, headers: headers)
    }

    func responseBodyArrived(_ chunk: ByteBuffer) {
        capture?.append(chunk)
    }

    /// What the request's body digest says about a finished request with its key and target.
    func matches(_ record: IdempotencyRecord) -> Bool {
        record.fingerprint.target == target && record.fingerprint.body == bodyDigest
    }
}

/// A response as it streams to the partner: status, replayable headers, and the body while it
/// stays within `IdempotencyRecord.maxBody`.
struct ResponseCapture {
    let status: Int
    private let headers: [IdempotencyRecord.Header]
    private var body: [UInt8] = []
    private var bodyKept = true

    init(status: Int, headers: HTTPHeaders) {
        self.status = status
        var kept: [IdempotencyRecord.Header] = []
        kept.reserveCapacity(headers.count)
        for (name, value) in headers where IdempotencyRecord.isReplayed(header: name) { kept.append(IdempotencyRecord.Header(name, value)) }
        self.headers = kept
    }

    mutating func append(_ chunk: ByteBuffer) {
        guard bodyKept else { return }
        guard body.count + chunk.readableBytes <= IdempotencyRecord.maxBody else {
            bodyKept = false
            body = []
            return
        }
        body += chunk.readableBytesView
    }

    func record(_ fingerprint: RequestFingerprint) -> IdempotencyRecord {
        IdempotencyRecord(fingerprint: fingerprint, status: status, headers: headers, body: body, bodyKept: bodyKept)
    }
}

extension ResponseShaping {
    /// A recorded response replayed: its status, headers and body, with this request's own
    /// headers and `Idempotent-Replayed: true`.
    static func replay(_ record: IdempotencyRecord, _ request: RequestRecord, date: String) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.reserveCapacity(record.headers.count + RequestRecord.responseHeaderCount + 3)
        for header in record.headers { headers.add(name: header.name, value: header.value) }
        headers.add(name: "Content-Length", value: String(record.body.count))
        headers.add(name: "Date", value: date)
        request.addResponseHeaders(to: &headers)
        headers.add(name: "Idempotent-Replayed", value: "true")
        return headers
    }

    /// The answer to a retry whose original response body was too large to keep.
    static func notReplayable(_ record: IdempotencyRecord) -> (Problem, [(String, String)]) {
        let problem = Problem(
            .idempotentResponseNotReplayable,
            detail: "The request with this key already completed with status \(record.status), but its response body was larger "
                + "than \(IdempotencyRecord.maxBody) bytes and is not kept for replay. Use a new key to send the request again.",
            extensions: [("original-status", .int(record.status))]
        )
        let location = record.headers.first { $0.name.lowercased() == "location" }.map { [("Location", $0.value)] } ?? []
        return (problem, location)
    }
}
