public import Foundation

/// Makes partner API keys: `sk_` and 43 base62 characters (256 bits from the system's secure
/// random source), with a key id that dates it.
public enum APIKeyFactory {
    public struct Key: Sendable {
        /// Shown once to the operator; only its SHA-256 is stored.
        public var secret: String
        /// The `id` for the partner file's keys list, e.g. `k20261122-3f9a`.
        public var id: String
    }

    private static let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

    public static func makeKey(now: Date = Date()) -> Key {
        var random = SystemRandomNumberGenerator()
        let secret = "sk_" + String((0..<43).map { _ in alphabet[Int(random.next(upperBound: UInt32(alphabet.count)))] })
        let day = now.formatted(Date.ISO8601FormatStyle(timeZone: TimeZone(identifier: "UTC")!).year().month().day().dateSeparator(.omitted))
        let suffix = String(random.next(upperBound: UInt16.max), radix: 16)
        return Key(secret: secret, id: "k\(day)-\(String(repeating: "0", count: 4 - suffix.count))\(suffix)")
    }

    public static func isValidPartnerID(_ id: String) -> Bool { PolicyNames.isValid(id) }
}
