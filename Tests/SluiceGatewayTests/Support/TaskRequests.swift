import NIOCore
import TestSupport

extension GatewayHarness {
    /// POSTs a small JSON order to an async route (as the partner `key`).
    func acceptTask(_ path: String, key: String = TestKeys.acme, headers: [(String, String)] = []) async throws -> TestResponse {
        try await partner(.POST, path, key: key, headers: headers, body: .bytes(ByteBuffer(string: "{\"part\":\"A-1\",\"model\":\"bracket.step\"}")))
    }

    /// Polls a status URL until its task is finished and returns the status document.
    func finishedTask(_ location: String, timeout: Duration = .seconds(10)) async throws -> [String: Any] {
        var document: [String: Any] = [:]
        try await eventually(timeout: timeout, "the task finishes") {
            document = try await partner(.GET, location).json()
            return ["succeeded", "failed", "cancelled"].contains(document["status"] as? String ?? "")
        }
        return document
    }
}
