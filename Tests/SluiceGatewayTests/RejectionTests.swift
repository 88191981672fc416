import AsyncHTTPClient
import Foundation
import TestSupport
import NIOCore
import NIOSSL
import Synchronization
import Testing
@testable import SluiceGateway

@Suite(.serialized)
struct RejectionTests {
    /// Missing and unknown keys get 401 with WWW-Authenticate: Bearer; the key is never echoed.
    @Test func unauthenticatedRequestsGet401() async throws {
        try await GatewayHarness.with { gateway in
            for key in [nil, "sk_test_unknown_key_00000001"] {
                let response = try await gateway.partner(.GET, "/v2/orders/1", key: key)
                try expectProblem(response, 401, "unauthorized", path: "/v2/orders/1")
                #expect(response.header("WWW-Authenticate") == "Bearer")
                #expect(!response.text.contains("sk_test"))
            }
            let logged = try gateway.logLines().map { "\($0)" }.joined()
            #expect(!logged.contains("sk_test_unknown_key"))
        }
    }

    /// A version the partner may not use is 403; an unknown one is 404; both are problems.
    @Test func versionRejections() async throws {
        try await GatewayHarness.with { gateway in
            let forbidden = try await gateway.partner(.GET, "/v1/orders/1", key: TestKeys.globex)
            try expectProblem(forbidden, 403, "forbidden-version", path: "/v1/orders/1")
            #expect(forbidden.header("Deprecation") == "@1790812800")
            let unknown = try await gateway.partner(.GET, "/v9/orders/1")
            try expectProblem(unknown, 404, "unknown-version", path: "/v9/orders/1")
            let unknownHeader = try await gateway.partner(.GET, "/orders/1", headers: [("API-Version", "2030-01-01")])
            try expectProblem(unknownHeader, 404, "unknown-version", path: "/orders/1")
        }
    }

    /// Without a prefix the API-Version header picks the version, else the partner's pinned one.
    @Test func versionFromHeaderAndPinnedDefault() async throws {
        try await GatewayHarness.with { gateway in
            let byHeader = try await gateway.partner(.GET, "/orders/1", headers: [("API-Version", "v1")])
            #expect(try (byHeader.json()["headers"] as? [String: String])?["x-api-version"] == "v1")
            let pinned = try await gateway.partner(.GET, "/orders/1")
            #expect(try (pinned.json()["headers"] as? [String: String])?["x-api-version"] == "v2")
        }
    }

    /// Every response of a deprecated version carries Deprecation and Sunset; current versions carry neither.
    @Test func deprecatedVersionHeaders() async throws {
        try await GatewayHarness.with { gateway in
            for path in ["/v1/orders/1", "/v1/nothing-here"] {
                let response = try await gateway.partner(.GET, path)
                #expect(response.header("Deprecation") == "@1790812800")
                #expect(response.header("Sunset") == "Wed, 30 Jun 2027 00:00:00 GMT")
            }
            let current = try await gateway.partner(.GET, "/v2/orders/1")
            #expect(current.header("Deprecation") == nil && current.header("Sunset") == nil)
        }
    }

    /// Unmatched routes are 404; a wrong method is 405 with Allow.
    @Test func routeRejections() async throws {
        try await GatewayHarness.with { gateway in
            try expectProblem(try await gateway.partner(.GET, "/v2/invoices"), 404, "not-found", path: "/v2/invoices")
            let wrongMethod = try await gateway.partner(.PUT, "/v2/orders/1")
            try expectProblem(wrongMethod, 405, "method-not-allowed", path: "/v2/orders/1")
            #expect(wrongMethod.header("Allow") == "DELETE, GET, HEAD")
            let dotted = try await gateway.partner(.GET, "/v2/orders/%2e%2e")
            try expectProblem(dotted, 400, "invalid-request", path: "/v2/orders/%2e%2e")
        }
    }

    /// A path parameter that would be another path at the upstream (encoded `/`, `\`, NUL, dot
    /// segments, `..;`) is 400 before anything else happens — before authentication, and
    /// nothing reaches the upstream; so are two Host headers.
    @Test func traversalInPathParametersIsRefused() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            for path in ["/v2/orders/..%2F..%2Fsecret", "/v2/orders/%2e%2e%2f", "/v2/orders/..;", "/v2/orders/..;x=1", "/v2/orders/a%5C..", "/v2/orders/a%00"] {
                try expectProblem(try await gateway.partner(.GET, path), 400, "invalid-request", path: path)
                #expect(try await gateway.partner(.GET, path, key: nil).status == 400, "refused before authentication: \(path)")
                #expect(try await gateway.partner(.GET, path, client: gateway.http2).status == 400, "over HTTP/2: \(path)")
            }
            #expect(recorder.startedCount == 0)
            #expect(try await gateway.partner(.GET, "/v2/orders/A%2017").status == 200)
            #expect(recorder.requests.map(\.path) == ["/api/echo/A%2017"])

            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send("GET /v2/orders/1 HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nX-API-Key: \(TestKeys.acme)\r\n\r\n")
            let answer = try await connection.read(until: "request_id")
            #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
            #expect(answer.contains("urn:sluice:problem:invalid-request"))
            await connection.close()
            #expect(recorder.startedCount == 1)
        }
    }

    /// A declared Content-Length over max_request_body is refused before any byte is read.
    @Test func declaredOversizedBodyIs413() async throws {
        try await GatewayHarness.with { gateway in
            let body = ByteBuffer(repeating: 1, count: (1 << 20) + 1)
            for client in [gateway.http1, gateway.http2] {
                let response = try await gateway.partner(.POST, "/v2/orders", body: .bytes(body), client: client)
                try expectProblem(response, 413, "payload-too-large", path: "/v2/orders")
            }
        }
    }

    /// A streamed upload far bigger than max_request_body is cut off with 413 after reading
    /// little more than the limit: the gateway's access log shows how much it read.
    @Test(arguments: [false, true])
    func streamedOversizedBodyIs413WithoutBuffering(overHTTP2: Bool) async throws {
        try await GatewayHarness.with { gateway in
            let requestID = "upload-\(overHTTP2 ? "h2" : "h1")"
            var request = HTTPClientRequest(url: gateway.https + "/v2/orders")
            request.method = .POST
            request.headers.add(name: "X-API-Key", value: TestKeys.acme)
            request.headers.add(name: "X-Request-Id", value: requestID)
            request.body = .stream(ChunkProducer(total: 64 << 20, produced: ByteCounter()), length: .unknown)
            let response = try await (overHTTP2 ? gateway.http2 : gateway.http1).execute(request, timeout: .seconds(20))
            let bytes = try await response.body.collect(upTo: 1 << 16)
            #expect(response.status == .payloadTooLarge)
            #expect(String(buffer: bytes).contains("urn:sluice:problem:payload-too-large"))
            try await eventually("the access log line of \(requestID)") {
                try gateway.logLines().contains { $0["request_id"] as? String == requestID }
            }
            let line = try #require(try gateway.logLines().first { $0["request_id"] as? String == requestID })
            #expect(line["status"] as? Int == 413)
            let read = try #require(line["bytes_in"] as? Int)
            #expect(read > 1 << 20 && read < (1 << 20) + (256 << 10), "read \(read) bytes of a 64 MiB upload")
        }
    }

    /// Headers over max_header_bytes are 431, over HTTP/1.1 (decoder limit) and HTTP/2 (checked per request).
    @Test func oversizedHeadersAre431() async throws {
        try await GatewayHarness.with { gateway in
            for client in [gateway.http1, gateway.http2] {
                let response = try await gateway.partner(
                    .GET, "/v2/orders/1", headers: [("X-Padding", String(repeating: "a", count: 5_000))], client: client
                )
                #expect(response.status == 431)
                #expect(response.header("Content-Type") == "application/problem+json")
                #expect(try response.json()["type"] as? String == "urn:sluice:problem:invalid-request")
            }
        }
    }

    /// A refused upstream connection is 502 bad-gateway, answered at once.
    @Test func refusedUpstreamIs502() async throws {
        try await GatewayHarness.with { gateway in
            let started = ContinuousClock.now
            let response = try await gateway.partner(.GET, "/v2/dead")
            try expectProblem(response, 502, "bad-gateway", path: "/v2/dead")
            #expect(ContinuousClock.now - started < .seconds(5), "no waiting for the connect timeout (10 s)")
        }
    }

    /// An upstream slower than the route's request_timeout is 504 upstream-timeout.
    @Test func slowUpstreamIs504() async throws {
        try await GatewayHarness.with { gateway in
            let response = try await gateway.partner(.GET, "/v2/slow?ms=6000")
            try expectProblem(response, 504, "upstream-timeout", path: "/v2/slow")
            let quick = try await gateway.partner(.GET, "/v2/slow?ms=10")
            #expect(quick.status == 200)
        }
    }

    /// HEAD on a rejected request gets the status and headers without a body.
    @Test func headRejectionHasNoBody() async throws {
        try await GatewayHarness.with { gateway in
            let response = try await gateway.partner(.HEAD, "/v2/orders/1", key: nil)
            #expect(response.status == 401)
            #expect(response.body.readableBytes == 0)
            let followUp = try await gateway.partner(.GET, "/v2/orders/1")
            #expect(followUp.status == 200)
        }
    }
}

@Suite(.serialized)
struct ClientCertificateTests {
    /// A partner listed by subject authenticates with its client certificate alone, over HTTP/1.1 and HTTP/2.
    @Test(arguments: [HTTPClient.Configuration.HTTPVersion.http1Only, .automatic])
    func clientCertificateAuthenticates(_ version: HTTPClient.Configuration.HTTPVersion) async throws {
        try await GatewayHarness.with { gateway in
            var configuration = try GatewayHarness.clientConfiguration(gateway.pki, version)
            configuration.tlsConfiguration = try gateway.pki.clientTLS(certificate: gateway.pki.clientCertificatePath, key: gateway.pki.clientKeyPath)
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            defer { _ = client.shutdown() }
            let response = try await gateway.partner(.GET, "/v2/orders/1", key: nil, client: client)
            #expect(response.status == 200)
            #expect(try (response.json()["headers"] as? [String: String])?["x-partner-id"] == "acme")
            try await client.shutdown()
        }
    }

    /// TLS below 1.2 is refused; 1.2 and 1.3 work.
    @Test func oldTLSVersionsAreRefused() async throws {
        try await GatewayHarness.with { gateway in
            for (maximum, works) in [(TLSVersion.tlsv11, false), (.tlsv12, true), (.tlsv13, true)] {
                var configuration = try GatewayHarness.clientConfiguration(gateway.pki, .http1Only)
                configuration.tlsConfiguration?.minimumTLSVersion = .tlsv1
                configuration.tlsConfiguration?.maximumTLSVersion = maximum
                configuration.connectionPool.retryConnectionEstablishment = false
                let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
                let response = try? await gateway.partner(.GET, "/v2/orders/1", client: client)
                #expect((response?.status == 200) == works, "TLS up to \(maximum)")
                try await client.shutdown()
            }
        }
    }

    /// A certificate from a CA the gateway does not trust fails the handshake.
    @Test func untrustedClientCertificateIsRefused() async throws {
        try await GatewayHarness.with { gateway in
            var configuration = try GatewayHarness.clientConfiguration(gateway.pki, .http1Only)
            configuration.tlsConfiguration = try gateway.pki.clientTLS(
                certificate: gateway.pki.strangerCertificatePath, key: gateway.pki.strangerKeyPath
            )
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            await #expect(throws: (any Error).self) {
                _ = try await gateway.partner(.GET, "/v2/orders/1", key: nil, client: client)
            }
            try await client.shutdown()
        }
    }
}

/// An upload body of `total` bytes made lazily in 64 KiB chunks, counting what was produced.
struct ChunkProducer: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let total: Int
    let produced: ByteCounter

    struct AsyncIterator: AsyncIteratorProtocol {
        let total: Int
        let produced: ByteCounter
        let chunk = ByteBuffer(repeating: 0x61, count: 64 << 10)

        mutating func next() async throws -> ByteBuffer? {
            guard produced.value < total else { return nil }
            produced.add(chunk.readableBytes)
            return chunk
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(total: total, produced: produced) }
}

final class ByteCounter: Sendable {
    private let count = Atomic<Int>(0)
    var value: Int { count.load(ordering: .relaxed) }
    func add(_ bytes: Int) { count.add(bytes, ordering: .relaxed) }
}
