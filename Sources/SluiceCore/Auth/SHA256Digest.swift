import Crypto

/// A SHA-256 digest, as stored in the policy files for API keys and admin tokens.
public struct SHA256Digest: Sendable, Hashable, CustomStringConvertible {
    /// The 32 bytes as four words: cheap to hash, compare and bucket.
    public let words: (UInt64, UInt64, UInt64, UInt64)

    public init?(bytes: some Sequence<UInt8>) {
        guard let digest = Array(bytes).withUnsafeBytes(SHA256Digest.init(raw:)) else { return nil }
        self = digest
    }

    /// The digest in exactly 32 bytes of memory (nil for any other length).
    public init?(raw: UnsafeRawBufferPointer) {
        guard raw.count == 32 else { return nil }
        func word(_ offset: Int) -> UInt64 {
            UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
        }
        words = (word(0), word(8), word(16), word(24))
    }

    /// The digest Crypto computed (read in place, nothing allocated).
    init(_ digest: SHA256.Digest) {
        self = digest.withUnsafeBytes { SHA256Digest(raw: $0)! }
    }

    /// Parses 64 hexadecimal characters (either case).
    public init?(hex: String) {
        let utf8 = Array(hex.utf8)
        guard utf8.count == 64 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        var index = 0
        while index < 64 {
            guard let high = hexDigitValue(utf8[index]), let low = hexDigitValue(utf8[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        self.init(bytes: bytes)
    }

    /// The digest of `secret`'s UTF-8 bytes.
    public static func of(_ secret: some StringProtocol) -> SHA256Digest {
        var hasher = SHA256()
        var copy = String(secret)
        copy.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        return SHA256Digest(hasher.finalize())
    }

    /// Lower-case hex, as written in policy files.
    public var hex: String {
        Hex.encode(words.0, words.1, words.2, words.3)
    }

    public var description: String { hex }

    /// Compares all 32 bytes without an early exit, so the time taken says nothing about where they differ.
    public func constantTimeEquals(_ other: SHA256Digest) -> Bool {
        ((words.0 ^ other.words.0) | (words.1 ^ other.words.1) | (words.2 ^ other.words.2) | (words.3 ^ other.words.3)) == 0
    }

    public static func == (lhs: SHA256Digest, rhs: SHA256Digest) -> Bool { lhs.constantTimeEquals(rhs) }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
        hasher.combine(words.2)
        hasher.combine(words.3)
    }
}

extension SHA256Digest {
    /// Reads a key hash from a policy file, reporting anything that is not 64 hex characters.
    static func read(_ value: YAMLValue, _ context: String) -> SHA256Digest? {
        guard let text = value.string(context) else { return nil }
        guard let digest = SHA256Digest(hex: text) else {
            value.report("\(context) must be 64 hex characters (the SHA-256 of the secret), got \(text.count) characters")
            return nil
        }
        return digest
    }
}
