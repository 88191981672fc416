import AsyncHTTPClient
import Foundation
import TestSupport
import HummingbirdCore
import Logging
import NIOCore
import Testing
@testable import SluiceGateway

@Suite(.serialized)
struct ConnectionTests {
    private let key = TestKeys.acme

    /// A client that sends part of a request head is disconnected after client_header_timeout
    /// (1 s here, with a 10 s idle timeout, so only the header timeout can explain the close).
    @Test func slowHeadersAreClosed() async throws {
        try await GatewayHarness.with({ $0.setTimeouts(header: "1s", idle: "10s") }) { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            let started = ContinuousClock.now
            try await connection.send("GET /v2/orders/1 HTTP/1.1\r\nHost: x\r\n")
            let (_, closed) = try await connection.readUntilClosed(timeout: .seconds(8))
            let elapsed = ContinuousClock.now - started
            #expect(closed)
            #expect(elapsed >= .milliseconds(900) && elapsed < .seconds(5), "closed after \(elapsed)")
        }
    }

    /// A keep-alive connection with nothing to do is closed after idle_timeout (1 s here, with a
    /// 10 s header timeout).
    @Test func idleConnectionsAreClosed() async throws {
        try await GatewayHarness.with({ $0.setTimeouts(header: "10s", idle: "1s") }) { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send("GET /v2/orders/1 HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\n\r\n")
            let response = try await connection.read(until: "\"body_sha256\"")
            #expect(response.hasPrefix("HTTP/1.1 200"))
            let idleSince = ContinuousClock.now
            let (_, closed) = try await connection.readUntilClosed(timeout: .seconds(8))
            let elapsed = ContinuousClock.now - idleSince
            #expect(closed && elapsed >= .milliseconds(900) && elapsed < .seconds(5), "closed after \(elapsed)")
        }
    }

    /// Garbage instead of HTTP gets a 400 problem and a closed connection.
    @Test func malformedRequestIs400() async throws {
        try await GatewayHarness.with { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send("HELLO THERE\r\n\r\n")
            let (text, closed) = try await connection.readUntilClosed(timeout: .seconds(5))
            #expect(text.hasPrefix("HTTP/1.1 400"))
            #expect(text.contains("application/problem+json") && text.contains("urn:sluice:problem:invalid-request"))
            #expect(closed)
        }
    }

    /// Content-Length together with Transfer-Encoding (request smuggling) is refused with 400 and never forwarded.
    @Test func conflictingFramingIs400() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send(
                "POST /v2/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/orders/1 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            let (text, closed) = try await connection.readUntilClosed(timeout: .seconds(5))
            #expect(text.hasPrefix("HTTP/1.1 400"))
            #expect(closed)
            #expect(recorder.requests.isEmpty)
        }
    }

    /// A chunked body with broken framing is 400 invalid-request, the connection is closed, and
    /// the upstream never sees a complete body.
    @Test func malformedChunkedBodyIs400() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send(
                "POST /v2/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
            )
            let (text, closed) = try await connection.readUntilClosed(timeout: .seconds(5))
            #expect(text.hasPrefix("HTTP/1.1 400"))
            #expect(text.contains("urn:sluice:problem:invalid-request"))
            #expect(closed)
            #expect(recorder.requests.allSatisfy { !$0.complete })
        }
    }

    /// A chunked upload cut off by the client never reaches the upstream as a complete body.
    @Test func truncatedUploadIsNotForwardedAsComplete() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            let connection = try await RawConnection.open(port: gateway.addresses.http!)
            try await connection.send(
                "POST /v2/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
            )
            try await eventually("the upstream saw the request") { recorder.startedCount == 1 }
            await connection.close()
            try await eventually("the upstream's read of the body ended") { recorder.requests.count == 1 }
            let received = try #require(recorder.requests.first)
            #expect(!received.complete, "a cut-off body must not look complete upstream")
            // Control: the same upload, finished, arrives complete.
            let finished = try await RawConnection.open(port: gateway.addresses.http!)
            try await finished.send(
                "POST /v2/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: \(key)\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            _ = try await finished.read(until: "\r\n\r\n")
            #expect(recorder.requests.count == 2)
            #expect(recorder.requests[1].complete && recorder.requests[1].bytes == 5)
        }
    }

    /// An HTTP/2 upload whose stream the client resets never reaches the upstream as a complete body.
    @Test func resetHTTP2UploadIsNotForwardedAsComplete() async throws {
        let recorder = RecordingUpstream()
        try await withRecordingUpstream(recorder) { gateway in
            let (chunks, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
            continuation.yield(ByteBuffer(string: "hello"))
            var request = HTTPClientRequest(url: gateway.https + "/v2/orders")
            request.method = .POST
            request.headers.add(name: "X-API-Key", value: key)
            request.body = .stream(chunks, length: .unknown)
            let upload = Task { try await gateway.http2.execute(request, timeout: .seconds(10)) }
            try await eventually("the upstream saw the request") { recorder.startedCount == 1 }
            upload.cancel()
            _ = await upload.result
            continuation.finish()
            try await eventually("the upstream's read of the body ended") { recorder.requests.count == 1 }
            #expect(recorder.requests.first?.complete == false, "a reset body must not look complete upstream")
        }
    }
}
