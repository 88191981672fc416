import Synchronization

/// Makes request ids, span ids and trace ids without a syscall or a lock per request: a
/// per-instance counter run through a keyed 64-bit permutation, so ids are unique within an
/// instance, look random, and reveal nothing about request volume.
public final class IdentifierGenerator: Sendable {
    private let counter = Atomic<UInt64>(0)
    private let instance: UInt64
    private let keys: (UInt64, UInt64)

    public init() {
        var random = SystemRandomNumberGenerator()
        instance = random.next()
        keys = (random.next(), random.next())
    }

    /// 64 bits, unique within this instance.
    public func next64() -> UInt64 {
        let count = counter.add(1, ordering: .relaxed).newValue
        return StableHash.mix(count ^ keys.0) ^ keys.1
    }

    /// 32 lower-case hex characters; also used as the trace id of traces this gateway starts.
    public func requestID() -> String {
        Hex.encode(instance, next64())
    }

    /// 15 base-32 characters (75 bits: 64 unique within this instance, 11 of the instance's
    /// random id), short enough for a `String` to keep inline: a token that names one request's
    /// claim without a heap allocation.
    public func token() -> String {
        var (low, high) = (next64(), instance)
        return String(unsafeUninitializedCapacity: 15) { buffer in
            for index in 0..<15 {
                buffer[index] = Self.base32[Int(low & 31)]
                low = low >> 5 | high << 59
                high >>= 5
            }
            return 15
        }
    }

    private static let base32 = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)

    /// 16 hex characters for a W3C span (parent) id.
    public func spanID() -> String {
        Hex.encode(next64())
    }
}

/// A W3C trace: its 32-hex-digit id and its 2-hex-digit flags.
public struct TraceIdentity: Sendable, Equatable {
    public let traceID: String
    public let flags: String
}

/// Request identity rules (SPEC §3).
public enum RequestIdentity {
    /// An incoming `X-Request-Id` is kept when it is 1–128 characters of `[A-Za-z0-9._-]`.
    public static func isValidRequestID(_ value: some StringProtocol) -> Bool {
        let utf8 = value.utf8
        guard !utf8.isEmpty, utf8.count <= 128 else { return false }
        return utf8.allSatisfy {
            isAlphanumericASCII($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
        }
    }

    /// The trace a request belongs to: the incoming `traceparent`'s trace id and flags, or a new
    /// sampled trace whose id is the request id (when that is 32 lower-case hex digits) or random.
    public static func trace(incoming: String?, requestID: String, generator: IdentifierGenerator) -> TraceIdentity {
        if let incoming, let traceID = traceID(of: incoming) {
            return TraceIdentity(traceID: String(traceID), flags: String(incoming.utf8.suffix(2))!)
        }
        let traceID = requestID.utf8.count == 32 && requestID.utf8.allSatisfy(isLowerHex) ? requestID : generator.requestID()
        return TraceIdentity(traceID: traceID, flags: "01")
    }

    /// `00-TRACEID-SPANID-FLAGS` for a span of `trace`.
    public static func traceparent(_ trace: TraceIdentity, spanID: UInt64) -> String {
        traceparent(traceID: trace.traceID.utf8, spanID: spanID, flags: trace.flags.utf8)
    }

    /// `00-TRACEID-SPANID-FLAGS`, written into one string.
    private static func traceparent(traceID: some Collection<UInt8>, spanID: UInt64, flags: some Collection<UInt8>) -> String {
        String(unsafeUninitializedCapacity: 55) { buffer in
            var index = 0
            func put(_ bytes: some Collection<UInt8>) {
                for byte in bytes {
                    buffer[index] = byte
                    index += 1
                }
            }
            put("00-".utf8)
            put(traceID)
            put("-".utf8)
            index += Hex.write(spanID, into: UnsafeMutableBufferPointer(rebasing: buffer[index...]))
            put("-".utf8)
            put(flags)
            return index
        }
    }

    /// The trace id of a valid version-00 `traceparent` (`00-TRACEID-SPANID-FLAGS`), else nil.
    public static func traceID(of header: String) -> Substring? {
        let utf8 = Array(header.utf8)
        guard utf8.count == 55, utf8[0] == UInt8(ascii: "0"), utf8[1] == UInt8(ascii: "0"),
            utf8[2] == UInt8(ascii: "-"), utf8[35] == UInt8(ascii: "-"), utf8[52] == UInt8(ascii: "-")
        else { return nil }
        let traceID = utf8[3..<35], spanID = utf8[36..<52], flags = utf8[53..<55]
        guard traceID.allSatisfy(isLowerHex), spanID.allSatisfy(isLowerHex), flags.allSatisfy(isLowerHex),
            traceID.contains(where: { $0 != UInt8(ascii: "0") }), spanID.contains(where: { $0 != UInt8(ascii: "0") })
        else { return nil }
        return Substring(String(decoding: traceID, as: UTF8.self))
    }

    private static func isLowerHex(_ c: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(c)
    }
}

/// Lower-case hex rendering of 64-bit words.
enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    static func encode(_ words: UInt64...) -> String {
        String(unsafeUninitializedCapacity: words.count * 16) { buffer in
            var index = 0
            for word in words { index += write(word, into: UnsafeMutableBufferPointer(rebasing: buffer[index...])) }
            return index
        }
    }

    /// Writes the 16 hex digits of `word` at the start of `buffer`; returns 16.
    static func write(_ word: UInt64, into buffer: UnsafeMutableBufferPointer<UInt8>) -> Int {
        var shift = 60
        var index = 0
        while shift >= 0 {
            buffer[index] = digit(UInt8((word >> UInt64(shift)) & 0xf))
            index += 1
            shift -= 4
        }
        return index
    }

    /// The lower-case hex digit of `value` (0–15).
    static func digit(_ value: UInt8) -> UInt8 {
        digits[Int(value)]
    }
}
