import Crypto
import Foundation

/// What identifies a keyed request (SPEC §3): the digest of its method, path and query, and the
/// SHA-256 of its body. The target is known at the head; the body's digest once it is read.
public struct RequestFingerprint: Sendable, Equatable {
    public var target: SHA256Digest
    public var body: SHA256Digest

    public init(target: SHA256Digest, body: SHA256Digest) {
        self.target = target
        self.body = body
    }

    /// The digest of `METHOD SP path-and-query`.
    public static func target(method: String, pathAndQuery: String) -> SHA256Digest {
        var hasher = BodyHasher()
        hasher.update(method)
        hasher.update(" ")
        hasher.update(pathAndQuery)
        return hasher.finalize()
    }
}

/// The SHA-256 of a body that arrives in pieces.
public struct BodyHasher: Sendable {
    private var hasher = SHA256()

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        hasher.update(bufferPointer: bytes)
    }

    /// Hashes the text's UTF-8 bytes.
    mutating func update(_ text: String) {
        var text = text
        text.withUTF8 { update(UnsafeRawBufferPointer($0)) }
    }

    public func finalize() -> SHA256Digest {
        SHA256Digest(hasher.finalize())
    }
}

/// A finished keyed request as the store keeps it: its fingerprint and final response, replayed
/// for a retry with the same key and fingerprint. Bodies larger than `maxBody` are not kept
/// (`bodyKept` false): a retry then learns the original status but gets no replay.
public struct IdempotencyRecord: Sendable, Equatable {
    /// The most response body bytes kept for a replay (SPEC §3: 1 MiB).
    public static let maxBody = 1 << 20

    public var fingerprint: RequestFingerprint
    public var status: Int
    /// The response headers worth replaying (no hop-by-hop or per-request ones, no framing).
    public var headers: [Header]
    public var body: [UInt8]
    public var bodyKept: Bool

    public struct Header: Sendable, Equatable {
        public var name: String
        public var value: String

        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    public init(fingerprint: RequestFingerprint, status: Int, headers: [Header], body: [UInt8], bodyKept: Bool) {
        self.fingerprint = fingerprint
        self.status = status
        self.headers = headers
        self.body = body
        self.bodyKept = bodyKept
    }

    /// The response headers that are not replayed: framing, hop-by-hop, and those every response
    /// gets anew (request id, date, rate-limit state, version headers).
    public static func isReplayed(header name: String) -> Bool {
        HeaderRewriter.keepsResponseHeader(name, nominated: []) && !setPerResponse.contains { HeaderName.equals(name, $0) }
    }

    /// Headers every response gets anew (hop-by-hop ones and `X-Request-Id` are `HeaderRewriter`'s).
    private static let setPerResponse: [StaticString] = [
        "content-length", "date", "ratelimit", "ratelimit-policy", "retry-after", "deprecation", "sunset", "idempotent-replayed",
    ]

    // MARK: - Encoding

    /// The first byte of every `encoded()` record.
    public static let encodingMarker = UInt8(ascii: "S")

    /// The record as text (the stores keep strings): `SIR1` and base64 of a length-prefixed layout
    /// (digests, status, whether the body was kept, headers, body), laid out in a scratch buffer
    /// (on the stack for a typical record) and written straight into one string.
    public func encoded() -> String {
        let length = 32 + 32 + 4 + 1 + 4 + headers.reduce(0) { $0 + 8 + $1.name.utf8.count + $1.value.utf8.count } + 4 + body.count
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: length) { buffer in
            var writer = LayoutWriter(buffer: buffer)
            writer.append(fingerprint.target)
            writer.append(fingerprint.body)
            writer.append(UInt32(status))
            writer.append(UInt64(bodyKept ? 1 : 0), bytes: 1)
            writer.append(UInt32(headers.count))
            for header in headers {
                writer.appendChunk(header.name.utf8)
                writer.appendChunk(header.value.utf8)
            }
            writer.appendChunk(body)
            return Self.base64(UnsafeBufferPointer(rebasing: buffer[..<writer.count]), prefix: "SIR1")
        }
    }

    /// Decodes `encoded()`; nil for anything else.
    public init?(encoded text: some Collection<UInt8>) {
        guard text.count > 4, text.prefix(4).elementsEqual("SIR1".utf8),
            let data = Data(base64Encoded: Data(text.dropFirst(4)))
        else { return nil }
        var reader = Reader(bytes: Array(data))
        guard let target = reader.take(32).flatMap({ SHA256Digest(bytes: $0) }),
            let body = reader.take(32).flatMap({ SHA256Digest(bytes: $0) }),
            let status = reader.word(), (100...999).contains(status),
            let kept = reader.take(1)?.first, kept <= 1,
            let count = reader.word(), count <= 1_000
        else { return nil }
        var headers: [Header] = []
        for _ in 0..<count {
            guard let name = reader.chunk(), let value = reader.chunk() else { return nil }
            headers.append(Header(String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        guard let bodyBytes = reader.chunk(), reader.isAtEnd else { return nil }
        self.init(
            fingerprint: RequestFingerprint(target: target, body: body), status: status, headers: headers, body: bodyBytes, bodyKept: kept == 1
        )
    }

    /// Writes the layout into a buffer of the right size; a write past its end traps rather
    /// than corrupting memory (the size is computed apart from the writes).
    private struct LayoutWriter {
        let buffer: UnsafeMutableBufferPointer<UInt8>
        var count = 0

        mutating func append(_ bytes: some Collection<UInt8>) {
            precondition(count + bytes.count <= buffer.count, "record layout larger than computed")
            let copied = bytes.withContiguousStorageIfAvailable { source in
                UnsafeMutableBufferPointer(rebasing: buffer[count...]).initialize(fromContentsOf: source)
            }
            if let copied {
                count += copied
                return
            }
            for byte in bytes {
                buffer[count] = byte
                count += 1
            }
        }

        /// Big-endian.
        mutating func append(_ value: UInt32) {
            append(UInt64(value), bytes: 4)
        }

        /// The 32 bytes, most significant first.
        mutating func append(_ digest: SHA256Digest) {
            append(digest.words.0, bytes: 8)
            append(digest.words.1, bytes: 8)
            append(digest.words.2, bytes: 8)
            append(digest.words.3, bytes: 8)
        }

        /// The low `bytes` bytes of `value`, big-endian.
        mutating func append(_ value: UInt64, bytes: Int) {
            precondition(count + bytes <= buffer.count, "record layout larger than computed")
            for shift in stride(from: (bytes - 1) * 8, through: 0, by: -8) {
                buffer[count] = UInt8(truncatingIfNeeded: value >> UInt64(shift))
                count += 1
            }
        }

        /// A length-prefixed chunk.
        mutating func appendChunk(_ chunk: some Collection<UInt8>) {
            append(UInt32(chunk.count))
            append(chunk)
        }
    }

    private static let base64Alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// `prefix` and the padded base64 of `bytes`, written straight into one string (a record is
    /// encoded for every keyed request: no intermediate `Data` or string copies).
    private static func base64(_ bytes: UnsafeBufferPointer<UInt8>, prefix: StaticString) -> String {
        let length = prefix.utf8CodeUnitCount + (bytes.count + 2) / 3 * 4
        return String(unsafeUninitializedCapacity: length) { output in
            var at = 0
            for byte in UnsafeBufferPointer(start: prefix.utf8Start, count: prefix.utf8CodeUnitCount) {
                output[at] = byte
                at += 1
            }
            var index = 0
            while index < bytes.count {
                let remaining = bytes.count - index
                let chunk = UInt32(bytes[index]) << 16 | (remaining > 1 ? UInt32(bytes[index + 1]) << 8 : 0) | (remaining > 2 ? UInt32(bytes[index + 2]) : 0)
                output[at] = base64Alphabet[Int(chunk >> 18 & 63)]
                output[at + 1] = base64Alphabet[Int(chunk >> 12 & 63)]
                output[at + 2] = remaining > 1 ? base64Alphabet[Int(chunk >> 6 & 63)] : UInt8(ascii: "=")
                output[at + 3] = remaining > 2 ? base64Alphabet[Int(chunk & 63)] : UInt8(ascii: "=")
                at += 4
                index += 3
            }
            return at
        }
    }

    private struct Reader {
        let bytes: [UInt8]
        var offset = 0

        var isAtEnd: Bool { offset == bytes.count }

        mutating func take(_ count: Int) -> ArraySlice<UInt8>? {
            guard count >= 0, bytes.count - offset >= count else { return nil }
            defer { offset += count }
            return bytes[offset..<offset + count]
        }

        mutating func word() -> Int? {
            take(4).map { $0.reduce(0) { $0 << 8 | Int($1) } }
        }

        mutating func chunk() -> [UInt8]? {
            word().flatMap { take($0) }.map(Array.init)
        }
    }
}
