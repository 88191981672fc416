import Testing
@testable import SluiceCore

struct HeaderRewriterTests {
    private let context = ForwardingContext(
        clientAddress: "203.0.113.9", scheme: "https", host: "api.example.com", partnerID: "acme", version: "v2",
        requestID: "req-1", traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )

    private func forwarded(_ fields: [(name: String, value: String)]) -> [(String, String)] {
        var out: [(String, String)] = []
        HeaderRewriter.forwardRequest(fields, context) { out.append(($0, $1)) }
        return out
    }

    /// Credentials, hop-by-hop headers and headers named by Connection are dropped; the gateway's own are added.
    @Test func requestHeadersAreRewritten() {
        let fields: [(name: String, value: String)] = [
            ("Authorization", "Bearer secret"), ("X-API-Key", "secret"), ("X-Internal", "1"), ("Connection", "keep-alive, X-Internal"),
            ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"), ("TE", "trailers"), ("Content-Type", "application/json"),
            ("X-Partner-Id", "spoofed"), ("x-request-id", "spoofed"), ("X-Forwarded-For", "198.51.100.1"), ("Cookie", "a=1"), ("cookie", "b=2"),
        ]
        let out = forwarded(fields)
        let names = out.map { $0.0.lowercased() }
        for dropped in ["authorization", "x-api-key", "connection", "x-internal", "keep-alive", "transfer-encoding", "te"] {
            #expect(!names.contains(dropped), "\(dropped) must not be forwarded")
        }
        let values = Dictionary(out.map { ($0.0.lowercased(), $0.1) }, uniquingKeysWith: { a, _ in a })
        #expect(values["content-type"] == "application/json")
        #expect(values["cookie"] == "a=1; b=2")
        #expect(values["x-forwarded-for"] == "203.0.113.9")
        #expect(values["x-forwarded-proto"] == "https" && values["x-forwarded-host"] == "api.example.com")
        #expect(values["x-partner-id"] == "acme" && values["x-api-version"] == "v2" && values["x-request-id"] == "req-1")
        #expect(values["traceparent"] == context.traceparent)
        #expect(names.filter { $0 == "x-partner-id" }.count == 1)
    }

    /// A partner is not a trusted proxy: the headers proxies use to say where a request came
    /// from, the gateway's own headers and underscore look-alikes never reach the upstream;
    /// X-Forwarded-For is the address the gateway saw.
    @Test func proxyTrustHeadersFromPartnersAreDropped() {
        let fields: [(name: String, value: String)] = [
            ("Forwarded", "for=10.0.0.1;proto=https"), ("X-Real-IP", "10.0.0.1"), ("X-Forwarded-Port", "443"), ("X-Forwarded-Prefix", "/admin"),
            ("x-forwarded-server", "internal"), ("X-Original-URL", "/admin/users"), ("X-Rewrite-URL", "/admin"), ("X_Partner_Id", "globex"),
            ("x_api_version", "v9"), ("X-Partner-Id", "globex"), ("X-Api-Version", "v9"), ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "internal.example"), ("Accept", "*/*"),
        ]
        let out = forwarded(fields)
        let names = out.map { $0.0.lowercased() }
        for dropped in ["forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server", "x-original-url", "x-rewrite-url", "x_partner_id", "x_api_version"] {
            #expect(!names.contains(dropped), "\(dropped) must not be forwarded")
        }
        #expect(out.filter { !["accept"].contains($0.0.lowercased()) }.map { $0.0 } == [
            "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Partner-Id", "X-Api-Version", "X-Request-Id", "traceparent",
        ])
        let values = Dictionary(out.map { ($0.0.lowercased(), $0.1) }, uniquingKeysWith: { a, _ in a })
        #expect(values["x-forwarded-for"] == "203.0.113.9")
        #expect(values["x-forwarded-proto"] == "https" && values["x-forwarded-host"] == "api.example.com")
        #expect(values["x-partner-id"] == "acme" && values["x-api-version"] == "v2")
    }

    /// A trusted proxy's X-Forwarded-For is kept and appended to, and its X-Forwarded-Proto and
    /// -Host are passed on; its other proxy headers are still dropped.
    @Test func trustedProxyKeepsItsForwardingHeaders() {
        var trusted = context
        trusted.fromTrustedProxy = true
        trusted.scheme = "http"
        var out: [(String, String)] = []
        let fields: [(name: String, value: String)] = [
            ("X-Forwarded-For", "198.51.100.1"), ("x-forwarded-for", "198.51.100.2"), ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "api.example.com"), ("Forwarded", "for=1.2.3.4"), ("X-Real-IP", "1.2.3.4"),
        ]
        HeaderRewriter.forwardRequest(fields, trusted) { out.append(($0, $1)) }
        let values = Dictionary(out.map { ($0.0.lowercased(), $0.1) }, uniquingKeysWith: { a, _ in a })
        #expect(values["x-forwarded-for"] == "198.51.100.1, 198.51.100.2, 203.0.113.9")
        #expect(values["x-forwarded-proto"] == "https" && values["x-forwarded-host"] == "api.example.com")
        #expect(values["forwarded"] == nil && values["x-real-ip"] == nil)
    }

    /// CIDR networks match their addresses, IPv4 also in its mapped IPv6 form; bad networks are refused.
    @Test func trustedProxyNetworks() throws {
        func network(_ text: String) throws -> IPNetwork { try #require(IPNetwork(text)) }
        func address(_ text: String) throws -> IPAddress { try #require(IPAddress(text)) }
        let ten = try network("10.0.0.0/8")
        #expect(ten.contains(try address("10.200.1.2")))
        #expect(ten.contains(try address("::ffff:10.0.0.1")))
        #expect(!ten.contains(try address("11.0.0.1")))
        let host = try network("192.168.1.7")
        #expect(host.contains(try address("192.168.1.7")))
        #expect(!host.contains(try address("192.168.1.8")))
        let v6 = try network("2001:db8::/32")
        #expect(v6.contains(try address("2001:db8:ffff::1")))
        #expect(!v6.contains(try address("2001:db9::1")))
        let anyIPv4 = try network("0.0.0.0/0")
        #expect(anyIPv4.contains(try address("203.0.113.1")))
        #expect(!anyIPv4.contains(try address("2001:db8::1")))
        for bad in ["10.0.0.0/33", "2001:db8::/129", "10.0.0/8", "host.example", "10.0.0.0/", "10.0.0.0/-1", ""] {
            #expect(IPNetwork(bad) == nil, "\(bad)")
        }
    }

    /// Response hop-by-hop headers and the upstream's X-Request-Id are not passed on.
    @Test func responseHeadersDropHopByHop() {
        let nominated = HeaderRewriter.connectionNominated(values: ["close, X-Upstream-Secret"])
        #expect(!HeaderRewriter.keepsResponseHeader("Transfer-Encoding", nominated: nominated))
        #expect(!HeaderRewriter.keepsResponseHeader("X-Upstream-Secret", nominated: nominated))
        #expect(!HeaderRewriter.keepsResponseHeader("X-Request-ID", nominated: nominated))
        #expect(HeaderRewriter.keepsResponseHeader("Content-Length", nominated: nominated))
        #expect(HeaderRewriter.keepsResponseHeader("ETag", nominated: nominated))
    }
}

struct ProblemTests {
    /// A problem document has the RFC 9457 members plus instance and request_id, in a stable order.
    @Test func problemDocumentShape() {
        let problem = Problem(.rateLimited, detail: "Bucket \"rate\" is empty.", extensions: [("violated-policies", .array([.string("rate")]))])
        #expect(
            problem.json(instance: "/v2/orders", requestID: "abc")
                == #"{"type":"urn:sluice:problem:rate-limited","title":"Rate limit exceeded","status":429,"detail":"Bucket \"rate\" is empty.","instance":"/v2/orders","request_id":"abc","violated-policies":["rate"]}"#
        )
    }

    /// Every problem name of SPEC §3 exists with its status.
    @Test func problemNamesAndStatuses() {
        let expected: [String: Int] = [
            "unauthorized": 401, "forbidden-version": 403, "unknown-version": 404, "not-found": 404,
            "method-not-allowed": 405, "rate-limited": 429, "quota-exceeded": 429, "concurrency-limited": 429,
            "idempotency-key-in-use": 409, "idempotency-key-reused": 422, "invalid-idempotency-key": 400,
            "missing-idempotency-key": 400, "payload-too-large": 413, "upstream-timeout": 504,
            "upstream-unavailable": 503, "bad-gateway": 502, "invalid-request": 400, "internal-error": 500, "forbidden": 403,
            "idempotent-response-not-replayable": 409, "task-not-cancellable": 409,
        ]
        #expect(Dictionary(uniqueKeysWithValues: ProblemType.allCases.map { ($0.rawValue, $0.defaultStatus) }) == expected)
    }

    /// Control characters and quotes are escaped.
    @Test func jsonEscaping() {
        #expect(JSONValue.string("a\"b\\c\n\u{01}").rendered == #""a\"b\\c\n\u0001""#)
    }
}

struct RequestIdentityTests {
    /// Valid incoming ids are kept; empty, long or odd ones are replaced.
    @Test func requestIDValidation() {
        #expect(RequestIdentity.isValidRequestID("order-17_retry.2"))
        #expect(!RequestIdentity.isValidRequestID(""))
        #expect(!RequestIdentity.isValidRequestID(String(repeating: "a", count: 129)))
        #expect(RequestIdentity.isValidRequestID(String(repeating: "a", count: 128)))
        #expect(!RequestIdentity.isValidRequestID("id with space"))
        #expect(!RequestIdentity.isValidRequestID("id\r\nX-Injected: 1"))
    }

    /// Generated ids are 32 hex characters and do not repeat.
    @Test func generatedIDsAreUnique() {
        let generator = IdentifierGenerator()
        let ids = (0..<10_000).map { _ in generator.requestID() }
        #expect(Set(ids).count == ids.count)
        #expect(ids.allSatisfy { $0.utf8.count == 32 && $0.allSatisfy(\.isHexDigit) })
    }

    /// Claim tokens are 15 base-32 characters and do not repeat; two gateways' tokens differ.
    @Test func claimTokensAreUniqueAndShort() {
        let (one, other) = (IdentifierGenerator(), IdentifierGenerator())
        let tokens = (0..<10_000).map { _ in one.token() } + (0..<10_000).map { _ in other.token() }
        #expect(Set(tokens).count == tokens.count)
        #expect(tokens.allSatisfy { $0.utf8.count == 15 && $0.utf8.allSatisfy { "abcdefghijklmnopqrstuvwxyz234567".utf8.contains($0) } })
    }

    /// An incoming traceparent is continued (same trace, new span); a missing or broken one starts a trace.
    @Test func traceparentContinuesOrStarts() {
        let generator = IdentifierGenerator()
        func traceparentUpstream(incoming: String?, requestID: String) -> String {
            RequestIdentity.traceparent(RequestIdentity.trace(incoming: incoming, requestID: requestID, generator: generator), spanID: generator.next64())
        }
        let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        let continued = traceparentUpstream(incoming: incoming, requestID: "x")
        #expect(continued.hasPrefix("00-0af7651916cd43dd8448eb211c80319c-") && continued.hasSuffix("-01"))
        #expect(!continued.contains("b7ad6b7169203331"))
        let requestID = generator.requestID()
        for broken in [nil, "garbage", "00-00000000000000000000000000000000-b7ad6b7169203331-01"] {
            let started = traceparentUpstream(incoming: broken, requestID: requestID)
            #expect(started.hasPrefix("00-\(requestID)-") && started.utf8.count == 55)
        }
    }
}

struct ConstantTimeTests {
    /// A sequence that counts the bytes read from it.
    final class CountingBytes: Sequence {
        let bytes: [UInt8]
        var read = 0
        init(_ text: String) { bytes = Array(text.utf8) }

        func makeIterator() -> AnyIterator<UInt8> {
            var index = 0
            return AnyIterator { [self] in
                guard index < bytes.count else { return nil }
                defer { index += 1 }
                read += 1
                return bytes[index]
            }
        }
    }

    /// Equal-length secrets are read to the end whether they differ in the first byte, the
    /// last one or not at all: the time taken says nothing about where they differ.
    @Test(arguments: ["xk_live_0123456789abcdef", "sk_live_0123456789abcdeX", "sk_live_0123456789abcdef"])
    func everyByteIsRead(_ other: String) {
        let secret = "sk_live_0123456789abcdef"
        let (a, b) = (CountingBytes(secret), CountingBytes(other))
        #expect(ConstantTime.equals(a, count: a.bytes.count, b, count: b.bytes.count) == (secret == other))
        #expect(a.read == secret.utf8.count && b.read == other.utf8.count)
    }

    @Test func lengthsAndContentsDecide() {
        #expect(ConstantTime.equals("sk_abc", "sk_abc"))
        #expect(!ConstantTime.equals("sk_abc", "sk_abd"))
        #expect(!ConstantTime.equals("sk_abc", "sk_ab"))
        #expect(!ConstantTime.equals("", "a"))
        #expect(ConstantTime.equals(Substring("x-sk_abc").dropFirst(2), "sk_abc"))
    }
}
