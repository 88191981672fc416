import Foundation
import TestSupport
import SluiceCore

/// API keys and admin tokens the test policies accept.
enum TestKeys {
    static let acme = "sk_test_acme_0000000000000001"
    static let globex = "sk_test_globex_000000000000001"
    static let operatorToken = "test-operator-token"
    static let viewerToken = "test-viewer-token"
}

/// A policy folder for one test: every listener on port 0, small limits so limit tests stay
/// fast, routes onto the demo upstream. Any file can be replaced before the gateway starts.
struct TestPolicies {
    let directory: URL
    var files: [String: String]
    /// `upstreams.yaml`, by name: each upstream's settings as YAML lines (written by `write()`).
    var upstreams: [String: String]

    init(directory: URL, upstreamPort: Int, pki: TestPKI) {
        self.directory = directory
        upstreams = [
            "main": "url: http://127.0.0.1:\(upstreamPort)",
            "dead": "url: http://127.0.0.1:1\nconnect_timeout: 10s",
        ]
        files = [
            "gateway.yaml": """
                listen:
                  https: 127.0.0.1:0
                  http: 127.0.0.1:0
                  admin: 127.0.0.1:0
                tls:
                  certificate: \(pki.serverCertificatePath)
                  key: \(pki.serverKeyPath)
                  client_ca: \(pki.caPath)
                limits:
                  max_request_body: 1MiB
                  max_header_bytes: 4KiB
                  client_header_timeout: 10s
                  idle_timeout: 10s
                admin:
                  tokens:
                    - { name: ops, sha256: "\(SHA256Digest.of(TestKeys.operatorToken).hex)", role: operator }
                    - { name: dash, sha256: "\(SHA256Digest.of(TestKeys.viewerToken).hex)", role: viewer }

                """,
            "routes.yaml": """
                default_version: v2
                versions:
                  v1: { status: deprecated, deprecated_at: 2026-10-01, sunset: 2027-06-30 }
                  v2: { status: current }
                routes:
                  - { id: get-order, versions: [v1, v2], method: GET, path: "/orders/{id}", upstream: main, upstream_path: "/api/echo/{id}" }
                  - { id: create-order, versions: [v1, v2], method: POST, path: /orders, upstream: main, upstream_path: /api/echo }
                  - { id: delete-order, versions: [v2], method: DELETE, path: "/orders/{id}", upstream: main, upstream_path: "/api/echo/{id}" }
                  - { id: status, versions: [v2], method: GET, path: "/status/{code}", upstream: main, upstream_path: "/status/{code}" }
                  - { id: slow, versions: [v2], method: GET, path: /slow, upstream: main, request_timeout: 2s }
                  - { id: long, versions: [v2], method: GET, path: /long, upstream: main, upstream_path: /slow, request_timeout: 30s }
                  - { id: bytes, versions: [v2], method: GET, path: /bytes, upstream: main }
                  - { id: dead, versions: [v2], method: GET, path: /dead, upstream: dead }

                """,
            "plans.yaml": """
                plans:
                  gold: { rate: { per_second: 1000, burst: 1000 } }

                """,
            "partners/acme.yaml": """
                id: acme
                name: ACME Manufacturing
                plan: gold
                versions: [v2, v1]
                keys:
                  - { id: test, sha256: "\(SHA256Digest.of(TestKeys.acme).hex)" }
                client_cert_subjects: ["CN=acme-erp,O=ACME Manufacturing"]

                """,
            "partners/globex.yaml": """
                id: globex
                name: Globex
                plan: gold
                versions: [v2]
                keys:
                  - { id: test, sha256: "\(SHA256Digest.of(TestKeys.globex).hex)" }

                """,
        ]
    }

    /// Replaces the `gold` plan (both partners use it) with `plan`, e.g. `{ rate: { per_second: 1, burst: 3 } }`.
    mutating func setPlan(_ plan: String) {
        files["plans.yaml"] = "plans:\n  gold: \(plan)\n"
    }

    /// Puts the store on Redis at `url` with `on_redis_failure: mode`.
    /// - Parameter timeout: The store call deadline; tests that count decisions exactly give a
    ///   generous one, so a busy test machine cannot turn into a fallback decision.
    mutating func useRedis(_ url: String, onFailure mode: String = "local", instances: Int = 1, timeout: String? = nil) {
        files["gateway.yaml"] = files["gateway.yaml"]! + """
            store:
              redis: \(url)
              on_redis_failure: \(mode)
              expected_instances: \(instances)
            \(timeout.map { "  timeout: \($0)" } ?? "")

            """
    }

    /// Gives `partner` a webhook endpoint signed with the Standard Webhooks test secret, and
    /// makes retries quick (`webhooks.schedule`).
    mutating func addWebhook(partner: String = "acme", url: String, allowPrivateAddresses: Bool = true, schedule: String = "[50ms, 50ms]") {
        files["partners/\(partner).yaml"]! += """
            webhook:
              url: \(url)
              secret: \(WebhookReceiver.secret)
              allow_private_addresses: \(allowPrivateAddresses)

            """
        files["gateway.yaml"]! += "webhooks:\n  timeout: 5s\n  schedule: \(schedule)\n"
    }

    /// For a gateway run as a process, whose ports the test must know beforehand: plain HTTP
    /// and admin on free loopback ports, no HTTPS listener.
    mutating func listenOnFixedPorts() throws -> (http: Int, admin: Int) {
        let (http, admin) = (try freePort(), try freePort())
        files["gateway.yaml"] = files["gateway.yaml"]!
            .replacingOccurrences(of: "https: 127.0.0.1:0", with: "https: null")
            .replacingOccurrences(of: "http: 127.0.0.1:0", with: "http: 127.0.0.1:\(http)")
            .replacingOccurrences(of: "admin: 127.0.0.1:0", with: "admin: 127.0.0.1:\(admin)")
        return (http, admin)
    }

    /// Sets client_header_timeout and idle_timeout.
    mutating func setTimeouts(header: String, idle: String) {
        files["gateway.yaml"] = files["gateway.yaml"]!
            .replacingOccurrences(of: "client_header_timeout: 10s", with: "client_header_timeout: \(header)")
            .replacingOccurrences(of: "idle_timeout: 10s", with: "idle_timeout: \(idle)")
    }

    /// Adds routes (YAML flow mappings, one per line) to routes.yaml.
    mutating func addRoutes(_ routes: String...) {
        files["routes.yaml"]! += routes.map { "  - \($0)\n" }.joined()
    }

    /// upstreams.yaml for `upstreams`.
    var upstreamsFile: String {
        "upstreams:\n" + upstreams.sorted { $0.key < $1.key }.map { name, settings in
            "  \(name):\n" + settings.split(separator: "\n").map { "    \($0)\n" }.joined()
        }.joined()
    }

    func write() throws {
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("partners"), withIntermediateDirectories: true)
        try upstreamsFile.write(to: directory.appendingPathComponent("upstreams.yaml"), atomically: true, encoding: .utf8)
        for (name, text) in files {
            try text.write(to: directory.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
    }

    /// Replaces one file on disk (as an operator editing it would).
    func rewrite(_ name: String, _ text: String) throws {
        try text.write(to: directory.appendingPathComponent(name), atomically: true, encoding: .utf8)
    }
}
