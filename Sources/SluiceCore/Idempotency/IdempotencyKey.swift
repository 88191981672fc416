/// The `Idempotency-Key` request header (IETF httpapi-idempotency-key draft, SPEC §3): 1–255
/// printable ASCII characters, sent bare (`abc-123`) or as a structured-field string (`"abc-123"`,
/// where `\"` and `\\` are the only escapes).
public enum IdempotencyKey {
    /// Longest key accepted, in characters.
    public static let maxLength = 255

    /// The key of a header value, or nil when the value is not a valid key.
    public static func parse(_ value: String) -> String? {
        let bytes = value.utf8
        guard let first = bytes.first else { return nil }
        if first == UInt8(ascii: "\"") { return parseQuoted(Array(bytes)) }
        guard bytes.count <= maxLength, bytes.allSatisfy(isPrintable) else { return nil }
        return value
    }

    /// The key of a request's `Idempotency-Key` fields: `.absent` without one, `.malformed` for a
    /// bad value or more than one field.
    public static func of(_ values: some Collection<String>) -> Presence {
        guard let first = values.first else { return .absent }
        guard values.dropFirst().isEmpty else { return .malformed }
        return parse(first).map(Presence.present) ?? .malformed
    }

    public enum Presence: Equatable, Sendable {
        case absent
        case present(String)
        case malformed
    }

    private static func parseQuoted(_ bytes: [UInt8]) -> String? {
        guard bytes.count >= 3, bytes.last == UInt8(ascii: "\"") else { return nil }
        var key: [UInt8] = []
        var index = 1
        let end = bytes.count - 1
        while index < end {
            var byte = bytes[index]
            if byte == UInt8(ascii: "\\") {
                index += 1
                guard index < end, bytes[index] == UInt8(ascii: "\"") || bytes[index] == UInt8(ascii: "\\") else { return nil }
                byte = bytes[index]
            } else if byte == UInt8(ascii: "\"") || !isPrintable(byte) {
                return nil
            }
            key.append(byte)
            index += 1
        }
        guard !key.isEmpty, key.count <= maxLength else { return nil }
        return String(decoding: key, as: UTF8.self)
    }

    private static func isPrintable(_ byte: UInt8) -> Bool { byte >= 0x20 && byte <= 0x7E }
}
