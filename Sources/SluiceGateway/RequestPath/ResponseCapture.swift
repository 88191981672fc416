import NIOCore
import NIOHTTP1
import SluiceCore

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
