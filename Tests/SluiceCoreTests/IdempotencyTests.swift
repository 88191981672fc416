import Testing
@testable import SluiceCore

struct IdempotencyKeyTests {
    /// Bare keys and structured-field strings of 1–255 printable ASCII characters are keys.
    @Test func validKeysParse() {
        #expect(IdempotencyKey.parse("8e03978e-40d5-43e8-bc93-6894a57f9324") == "8e03978e-40d5-43e8-bc93-6894a57f9324")
        #expect(IdempotencyKey.parse("\"8e03978e\"") == "8e03978e")
        #expect(IdempotencyKey.parse("\"a \\\"quoted\\\" \\\\ key\"") == "a \"quoted\" \\ key")
        #expect(IdempotencyKey.parse("x") == "x")
        #expect(IdempotencyKey.parse(String(repeating: "k", count: 255)) != nil)
        #expect(IdempotencyKey.parse("\"" + String(repeating: "k", count: 255) + "\"") != nil)
    }

    /// Empty, too long, non-ASCII, control characters and broken quoting are malformed.
    @Test func malformedKeysAreRejected() {
        for value in [
            "", "\"\"", String(repeating: "k", count: 256), "\"" + String(repeating: "k", count: 256) + "\"", "ключ", "tab\there",
            "nul\u{0}", "\"unterminated", "\"bad \\n escape\"", "\"inner \" quote\"", "\u{7F}",
        ] {
            #expect(IdempotencyKey.parse(value) == nil, "\(value.debugDescription)")
        }
    }

    /// Two Idempotency-Key fields are as malformed as a bad one; none is absent.
    @Test func fieldCountMatters() {
        #expect(IdempotencyKey.of([]) == .absent)
        #expect(IdempotencyKey.of(["a"]) == .present("a"))
        #expect(IdempotencyKey.of(["a", "b"]) == .malformed)
        #expect(IdempotencyKey.of(["\"\""]) == .malformed)
    }
}

struct IdempotencyRecordTests {
    private func sample(body: [UInt8]) -> IdempotencyRecord {
        var hasher = BodyHasher()
        body.withUnsafeBytes { hasher.update($0) }
        return IdempotencyRecord(
            fingerprint: RequestFingerprint(target: RequestFingerprint.target(method: "POST", pathAndQuery: "/v2/orders"), body: hasher.finalize()),
            status: 201, headers: [.init("Content-Type", "application/json"), .init("Location", "/v2/orders/7")], body: body, bodyKept: true
        )
    }

    /// A record survives encoding byte for byte, binary bodies of every padding length included.
    @Test func encodingRoundTrips() {
        let record = sample(body: Array(0...255) + Array("{\"id\":7}".utf8))
        #expect(IdempotencyRecord(encoded: Array(record.encoded().utf8)) == record)
        for length in 0..<6 {
            let short = sample(body: Array(repeating: 0xFF, count: length))
            #expect(IdempotencyRecord(encoded: Array(short.encoded().utf8)) == short, "body of \(length) bytes")
        }
    }

    /// The target digest tells method, path and query apart.
    @Test func targetDigestCoversMethodPathAndQuery() {
        let base = RequestFingerprint.target(method: "POST", pathAndQuery: "/v2/orders?a=1")
        #expect(base == RequestFingerprint.target(method: "POST", pathAndQuery: "/v2/orders?a=1"))
        #expect(base != RequestFingerprint.target(method: "PATCH", pathAndQuery: "/v2/orders?a=1"))
        #expect(base != RequestFingerprint.target(method: "POST", pathAndQuery: "/v2/orders?a=2"))
        #expect(base != RequestFingerprint.target(method: "POST", pathAndQuery: "/v2/order?a=1"))
    }

    /// Garbage, truncation and trailing bytes decode to nothing rather than to a wrong record.
    @Test func corruptRecordsDoNotDecode() {
        let encoded = Array(sample(body: Array("hello".utf8)).encoded().utf8)
        #expect(IdempotencyRecord(encoded: Array("SIR1".utf8)) == nil)
        #expect(IdempotencyRecord(encoded: Array("XXXX".utf8) + encoded.dropFirst(4)) == nil)
        #expect(IdempotencyRecord(encoded: Array("SIR1!!not base64!!".utf8)) == nil)
        #expect(IdempotencyRecord(encoded: encoded.dropLast(8)) == nil)
        let padded = Array(("SIR1" + ([UInt8](repeating: 0, count: 200)).map { String($0) }.joined()).utf8)
        #expect(IdempotencyRecord(encoded: padded) == nil)
    }

    /// Framing, hop-by-hop and per-request headers are not replayed.
    @Test func perRequestHeadersAreNotReplayed() {
        for name in ["X-Request-Id", "Date", "RateLimit", "RateLimit-Policy", "Content-Length", "Transfer-Encoding", "Connection", "Sunset"] {
            #expect(!IdempotencyRecord.isReplayed(header: name), "\(name)")
        }
        for name in ["Content-Type", "Location", "ETag", "X-Order-Id"] { #expect(IdempotencyRecord.isReplayed(header: name), "\(name)") }
    }
}
