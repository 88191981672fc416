import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Testing

/// A response read whole, for assertions.
struct TestResponse {
    let status: Int
    let headers: HTTPHeaders
    let body: ByteBuffer
    let version: HTTPVersion

    func header(_ name: String) -> String? { headers.first(name: name) }

    var text: String { String(buffer: body) }

    func json() throws -> [String: Any] {
        do {
            return try JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] ?? [:]
        } catch {
            throw NotJSON(status: status, body: text, underlying: "\(error)")
        }
    }
}

struct RequestFailed: Error {
    let method: String
    let url: String
    let underlying: String
}

struct NotJSON: Error {
    let status: Int
    let body: String
    let underlying: String
}

extension GatewayHarness {
    /// Sends a request to `url` (a full URL) and reads the whole response (up to 64 MiB).
    func send(
        _ method: HTTPMethod = .GET, _ url: String, key: String? = TestKeys.acme, headers: [(String, String)] = [],
        body: HTTPClientRequest.Body? = nil, client: HTTPClient? = nil, timeout: TimeAmount = .seconds(10)
    ) async throws -> TestResponse {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let key { request.headers.add(name: "Authorization", value: "Bearer \(key)") }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        request.body = body
        let response: HTTPClientResponse
        let bytes: ByteBuffer
        do {
            response = try await (client ?? http1).execute(request, timeout: timeout)
            bytes = try await response.body.collect(upTo: 64 << 20)
        } catch {
            throw RequestFailed(method: method.rawValue, url: url, underlying: "\(error)")
        }
        return TestResponse(status: Int(response.status.code), headers: response.headers, body: bytes, version: response.version)
    }

    /// A request to the HTTPS partner listener.
    func partner(
        _ method: HTTPMethod = .GET, _ path: String, key: String? = TestKeys.acme, headers: [(String, String)] = [],
        body: HTTPClientRequest.Body? = nil, client: HTTPClient? = nil
    ) async throws -> TestResponse {
        try await send(method, https + path, key: key, headers: headers, body: body, client: client)
    }
}

/// Asserts an RFC 9457 problem document with the gateway's members.
func expectProblem(_ response: TestResponse, _ status: Int, _ name: String, path: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    #expect(response.status == status, sourceLocation: sourceLocation)
    #expect(response.header("Content-Type") == "application/problem+json", sourceLocation: sourceLocation)
    let problem = try response.json()
    #expect(problem["type"] as? String == "urn:sluice:problem:\(name)", sourceLocation: sourceLocation)
    #expect(problem["status"] as? Int == status, sourceLocation: sourceLocation)
    #expect((problem["title"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
    #expect((problem["detail"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
    #expect(problem["instance"] as? String == path, sourceLocation: sourceLocation)
    #expect(problem["request_id"] as? String == response.header("X-Request-Id"), sourceLocation: sourceLocation)
    #expect(response.header("Date")?.hasSuffix(" GMT") == true, sourceLocation: sourceLocation)
}

extension GatewayHarness {
    /// The value of one series on /metrics, e.g. `sluice_breaker_state{upstream="main"}`; nil when absent.
    func metric(_ series: String) async throws -> Double? {
        try await send(.GET, admin + "/metrics", key: nil).text.split(separator: "\n")
            .first { $0.hasPrefix(series + " ") }
            .flatMap { Double($0.dropFirst(series.count + 1)) }
    }
}
