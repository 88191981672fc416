import AsyncHTTPClient
import Foundation
import NIOCore
import Testing
@testable import SluiceGateway

@Suite(.serialized)
struct ProxyTests {
    /// A GET is forwarded over HTTP/1.1 and HTTP/2 with the path rewritten and the gateway's headers added.
    @Test(arguments: [false, true])
    func forwardsWithRewrittenHeaders(overHTTP2: Bool) async throws {
        try await GatewayHarness.with { gateway in
            let response = try await gateway.partner(
                .GET, "/v2/orders/A-17?expand=lines",
                headers: [
                    ("X-Request-Id", "client-req-1"), ("X-Forwarded-For", "198.51.100.7"), ("X-Partner-Id", "spoofed"),
                    ("X-API-Key", TestKeys.acme), ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                    ("Accept", "application/json"),
                ],
                client: overHTTP2 ? gateway.http2 : gateway.http1
            )
            #expect(response.status == 200)
            #expect(response.version == (overHTTP2 ? .http2 : .http1_1))
            #expect(response.header("X-Request-Id") == "client-req-1")
            let echo = try response.json()
            #expect(echo["path"] as? String == "/api/echo/A-17")
            #expect(echo["query"] as? String == "expand=lines")
            let headers = try #require(echo["headers"] as? [String: String])
            #expect(headers["x-partner-id"] == "acme")
            #expect(headers["x-api-version"] == "v2")
            #expect(headers["x-request-id"] == "client-req-1")
            #expect(headers["x-forwarded-for"] == "127.0.0.1")
            #expect(headers["x-forwarded-proto"] == "https")
            #expect(headers["x-forwarded-host"] == "localhost:\(gateway.addresses.https!)")
            #expect(headers["accept"] == "application/json")
            #expect(headers["authorization"] == nil && headers["x-api-key"] == nil)
            let traceparent = try #require(headers["traceparent"])
            #expect(traceparent.hasPrefix("00-0af7651916cd43dd8448eb211c80319c-") && !traceparent.contains("b7ad6b7169203331"))
        }
    }

    /// Upstream status, headers and body pass through unchanged; a bad X-Request-Id is replaced.
    @Test func upstreamAnswerPassesThrough() async throws {
        try await GatewayHarness.with { gateway in
            let response = try await gateway.partner(.GET, "/v2/status/503", headers: [("X-Request-Id", "bad id!")])
            #expect(response.status == 503)
            #expect(response.header("Content-Type") == "application/json")
            #expect(response.text == #"{"status":503}"#)
            let date = try #require(response.header("Date"))
            #expect(date.hasSuffix(" GMT") && date.count == 29)
            let id = try #require(response.header("X-Request-Id"))
            #expect(id != "bad id!" && id.count == 32)
        }
    }

    /// Request bodies stream upstream intact, over both protocols, with and without a declared length.
    @Test(arguments: [(false, true), (true, true), (false, false), (true, false)])
    func requestBodiesStreamIntact(_ example: (overHTTP2: Bool, declaredLength: Bool)) async throws {
        try await GatewayHarness.with { gateway in
            let payload = ByteBuffer(bytes: (0..<900_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            let chunks = stride(from: 0, to: payload.readableBytes, by: 16_384).map {
                payload.getSlice(at: $0, length: min(16_384, payload.readableBytes - $0))!
            }
            let body: HTTPClientRequest.Body = .stream(
                chunks.async, length: example.declaredLength ? .known(Int64(payload.readableBytes)) : .unknown
            )
            let response = try await gateway.partner(
                .POST, "/v2/orders", body: body, client: example.overHTTP2 ? gateway.http2 : gateway.http1
            )
            #expect(response.status == 200)
            let echo = try response.json()
            #expect(echo["body_bytes"] as? Int == 900_000)
            #expect(echo["body_sha256"] as? String == sha256Hex(payload))
        }
    }

    /// A large response streams through with its Content-Length.
    @Test func largeResponseStreams() async throws {
        try await GatewayHarness.with { gateway in
            var request = HTTPClientRequest(url: gateway.https + "/v2/bytes?n=33554432")
            request.headers.add(name: "X-API-Key", value: TestKeys.acme)
            let response = try await gateway.http2.execute(request, timeout: .seconds(30))
            #expect(response.status == .ok)
            #expect(response.headers.first(name: "content-length") == "33554432")
            var received = 0
            for try await chunk in response.body { received += chunk.readableBytes }
            #expect(received == 33_554_432)
        }
    }

    /// A partner is not a trusted proxy: Forwarded, X-Real-IP, X-Forwarded-*, X-Original-URL,
    /// X-Rewrite-URL and underscore look-alikes never reach the upstream; X-Forwarded-For is
    /// the address the gateway saw.
    @Test func partnersAreNotTrustedProxies() async throws {
        try await GatewayHarness.with { gateway in
            let spoofed = [
                ("Forwarded", "for=10.0.0.1;proto=https"), ("X-Real-IP", "10.0.0.1"), ("X-Forwarded-Port", "443"),
                ("X-Forwarded-Prefix", "/internal"), ("X-Original-URL", "/admin/users"), ("X-Rewrite-URL", "/admin"),
                ("X_Partner_Id", "globex"), ("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Proto", "http"),
            ]
            for client in [gateway.http1, gateway.http2] {
                let response = try await gateway.partner(.GET, "/v2/orders/1", headers: spoofed, client: client)
                let headers = try #require(try response.json()["headers"] as? [String: String])
                for name in ["forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix", "x-original-url", "x-rewrite-url", "x_partner_id"] {
                    #expect(headers[name] == nil, "\(name) reached the upstream")
                }
                #expect(headers["x-forwarded-for"] == "127.0.0.1")
                #expect(headers["x-forwarded-proto"] == "https")
                #expect(headers["x-partner-id"] == "acme")
            }
        }
    }

    /// A load balancer listed in `listen.trusted_proxies` keeps its X-Forwarded-For (appended
    /// to) and its X-Forwarded-Proto.
    @Test func trustedProxyForwardedForIsKept() async throws {
        try await GatewayHarness.with({ policies in
            policies.files["gateway.yaml"] = policies.files["gateway.yaml"]!.replacingOccurrences(
                of: "  admin: 127.0.0.1:0\n", with: "  admin: 127.0.0.1:0\n  trusted_proxies: [127.0.0.0/8]\n"
            )
        }) { gateway in
            let response = try await gateway.send(
                .GET, gateway.http + "/v2/orders/1", headers: [("X-Forwarded-For", "198.51.100.7"), ("X-Forwarded-Proto", "https"), ("X-Real-IP", "1.2.3.4")]
            )
            let headers = try #require(try response.json()["headers"] as? [String: String])
            #expect(headers["x-forwarded-for"] == "198.51.100.7, 127.0.0.1")
            #expect(headers["x-forwarded-proto"] == "https")
            #expect(headers["x-real-ip"] == nil)
        }
    }

    /// The plain listener forwards too, with X-Forwarded-Proto http.
    @Test func plainListenerForwards() async throws {
        try await GatewayHarness.with { gateway in
            let response = try await gateway.send(.GET, gateway.http + "/orders/9")
            #expect(response.status == 200)
            let headers = try #require(try response.json()["headers"] as? [String: String])
            #expect(headers["x-forwarded-proto"] == "http")
        }
    }
}

extension Array where Element: Sendable {
    /// The elements as an async sequence.
    var async: AsyncStream<Element> {
        AsyncStream { continuation in
            for element in self { continuation.yield(element) }
            continuation.finish()
        }
    }
}

func sha256Hex(_ buffer: ByteBuffer) -> String {
    var hasher = SHA256Hasher()
    hasher.update(buffer)
    return hasher.hex
}
