import Crypto
import Foundation

/// A partner's webhook signing secret (Standard Webhooks): `whsec_` followed by the base64 of
/// the key bytes. The description never shows the key.
public struct WebhookSecret: Sendable, Equatable, CustomStringConvertible {
    /// Why a secret was refused.
    public enum Problem: Error, Equatable, CustomStringConvertible {
        case missingPrefix
        case notBase64
        case tooShort(bytes: Int)
        case tooLong(bytes: Int)

        public var description: String {
            switch self {
            case .missingPrefix: "a webhook secret must start with \"whsec_\""
            case .notBase64: "a webhook secret must be \"whsec_\" followed by base64"
            case .tooShort(let bytes): "a webhook secret must hold at least 24 bytes of key (this one holds \(bytes))"
            case .tooLong(let bytes): "a webhook secret must hold at most 64 bytes of key (this one holds \(bytes))"
            }
        }
    }

    let key: SymmetricKey

    /// Parses `whsec_BASE64`: the key must be 24–64 bytes (Standard Webhooks recommends 24–64).
    public init(_ text: String) throws(Problem) {
        guard text.hasPrefix("whsec_") else { throw .missingPrefix }
        guard let bytes = Data(base64Encoded: String(text.dropFirst("whsec_".count))) else { throw .notBase64 }
        guard bytes.count >= 24 else { throw .tooShort(bytes: bytes.count) }
        guard bytes.count <= 64 else { throw .tooLong(bytes: bytes.count) }
        key = SymmetricKey(data: bytes)
    }

    public var description: String { "whsec_…" }

    public static func == (lhs: WebhookSecret, rhs: WebhookSecret) -> Bool {
        lhs.key.withUnsafeBytes { left in rhs.key.withUnsafeBytes { right in left.elementsEqual(right) } }
    }
}

/// Standard Webhooks signatures: `v1,` + base64 of HMAC-SHA256 over `id.timestamp.body`.
public enum WebhookSignature {
    /// The `webhook-signature` value of one attempt.
    /// - Parameter timestamp: Seconds since the Unix epoch (the `webhook-timestamp` header).
    public static func sign(id: String, timestamp: Int64, body: some Collection<UInt8>, secret: WebhookSecret) -> String {
        var hmac = HMAC<SHA256>(key: secret.key)
        hmac.update(data: Array("\(id).\(timestamp).".utf8))
        hmac.update(data: Array(body))
        return "v1," + Data(hmac.finalize()).base64EncodedString()
    }

    /// Whether a `webhook-signature` header (space-separated `v1,…` entries) holds a valid
    /// signature of the message, and its timestamp is within `tolerance` seconds of `now`
    /// (what a receiver checks; the tests' receiver uses it).
    public static func verify(
        signatures header: String, id: String, timestamp: Int64, body: some Collection<UInt8>, secret: WebhookSecret, now: Int64,
        tolerance: Int64 = 300
    ) -> Bool {
        guard abs(now - timestamp) <= tolerance else { return false }
        let expected = Array(sign(id: id, timestamp: timestamp, body: body, secret: secret).utf8)
        return header.split(separator: " ").contains { candidate in
            let bytes = Array(candidate.utf8)
            // Constant time for equal lengths: every byte is compared.
            guard bytes.count == expected.count else { return false }
            return zip(bytes, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
        }
    }
}
