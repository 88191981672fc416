import Logging
import NIOCore
import NIOHTTP1
import SluiceCore
import SluiceStore

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
