import AsyncHTTPClient
import DemoUpstream
import Foundation
import TestSupport
import Logging
import SluiceCore
import Testing

@Suite(.serialized)
struct CLITests {
    /// The repository's example policies pass `sluice policies check` (with dev certificates in place).
    @Test func examplePoliciesPassTheCheck() async throws {
        let root = try Self.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: root) }
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        try FileManager.default.copyItem(at: repository.appendingPathComponent("policies"), to: root.appendingPathComponent("policies"))
        let pki = try TestPKI(directory: root.appendingPathComponent("pki"))
        let certs = root.appendingPathComponent("certs")
        try FileManager.default.createDirectory(at: certs, withIntermediateDirectories: true)
        for (source, target) in [(pki.serverCertificatePath, "dev.crt"), (pki.serverKeyPath, "dev.key"), (pki.caPath, "ca.crt")] {
            try FileManager.default.copyItem(atPath: source, toPath: certs.appendingPathComponent(target).path)
        }
        let result = try await SluiceProcess.run(["policies", "check", "--policies", root.appendingPathComponent("policies").path])
        #expect(result.code == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains(": ok (version "))
    }

    /// A broken set exits 1 printing one FILE:LINE:COL: message line per problem.
    @Test func brokenPoliciesFailTheCheck() async throws {
        let root = try Self.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: root) }
        let pki = try TestPKI(directory: root.appendingPathComponent("pki"))
        var policies = TestPolicies(directory: root.appendingPathComponent("policies"), upstreamPort: 9, pki: pki)
        policies.files["plans.yaml"] = "plans:\n  gold: { rate: { per_second: fast, burst: 10 } }\n"
        policies.files["partners/globex.yaml"] = policies.files["partners/globex.yaml"]!.replacingOccurrences(of: "plan: gold", with: "plan: bronze")
        try policies.write()
        let directory = policies.directory.path
        let result = try await SluiceProcess.run(["policies", "check", "--policies", directory])
        #expect(result.code == 1)
        #expect(result.stdout.split(separator: "\n") == [
            "\(directory)/partners/globex.yaml:3:7: partner 'globex' names unknown plan 'bronze'",
            "\(directory)/plans.yaml:2:31: expected a number for plan 'gold' rate.per_second, got 'fast'",
        ])
    }

    /// A missing folder and a bad flag or value are user errors (exit 1).
    @Test func userErrorsExitWithOne() async throws {
        #expect(try await SluiceProcess.run(["policies", "check", "--policies", "/nonexistent/policies"]).code == 1)
        #expect(try await SluiceProcess.run(["policies", "check", "--no-such-flag"]).code == 1)
        #expect(try await SluiceProcess.run(["keys", "generate", "--partner", "bad id!"]).code == 1)
        for threads in ["0", "-3", "many", "100000"] {
            let result = try await SluiceProcess.run(["serve", "--threads", threads])
            #expect(result.code == 1, "--threads \(threads)")
        }
        for delay in ["-1", "soon", "60001"] {
            let result = try await SluiceProcess.run(["demo-upstream", "--port", "0", "--delay-ms", delay])
            #expect(result.code == 1 && result.stderr.contains("delay-ms"), "--delay-ms \(delay): \(result.stderr)")
        }
        #expect(try await SluiceProcess.run(["--help"]).code == 0)
    }

    /// `keys generate` prints a new key once and the sha256 line that authenticates it.
    @Test func keysGenerateprintsKeyAndHash() async throws {
        let first = try await SluiceProcess.run(["keys", "generate", "--partner", "acme"])
        let second = try await SluiceProcess.run(["keys", "generate", "--partner", "acme"])
        #expect(first.code == 0)
        let lines = first.stdout.split(separator: "\n").map(String.init)
        let key = try #require(lines.first { $0.hasPrefix("sk_") })
        #expect(key.count == 46)
        #expect(!second.stdout.contains(key))
        let entry = try #require(lines.first { $0.contains("sha256:") })
        #expect(entry.contains("sha256: \"\(SHA256Digest.of(key).hex)\""))
        #expect(entry.hasPrefix("  - { id: k"))
    }

    /// `serve` refuses to start on invalid policies: exit 1 with the problems on stderr.
    @Test func serveRefusesInvalidPolicies() async throws {
        let root = try Self.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: root) }
        let pki = try TestPKI(directory: root.appendingPathComponent("pki"))
        var policies = TestPolicies(directory: root.appendingPathComponent("policies"), upstreamPort: 9, pki: pki)
        policies.files["routes.yaml"] = "default_version: v2\nversions: { v1: { status: current }, v2: { status: current } }\nroutes:\n  - { id: x, versions: [v2], method: GET, path: /x, upstream: nowhere }\n"
        try policies.write()
        let result = try await SluiceProcess.run(["serve", "--policies", policies.directory.path])
        #expect(result.code == 1)
        let lines = result.stderr.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasSuffix("routes.yaml:4:63: route 'x' names unknown upstream 'nowhere'") == true, "\(lines)")
        #expect(lines.last == "sluice: the policies have 1 problem(s); not starting")
    }

    /// SIGHUP reloads; SIGTERM turns /readyz to 503, lets the in-flight request finish and exits 0.
    /// The upstream holds the request until the drain has been seen, so no timing decides the order.
    @Test func serveReloadsOnHangupAndDrainsOnTerminate() async throws {
        let root = try Self.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: root) }
        let recorder = RecordingUpstream()
        recorder.reply(200, body: #"{"order":"17"}"#)
        var logger = Logger(label: "recorder")
        logger.logLevel = .critical
        try await withListeningService({ recorder.server(logger: logger, onListening: $0) }) { upstreamPort in
            let pki = try TestPKI(directory: root.appendingPathComponent("pki"))
            var policies = TestPolicies(directory: root.appendingPathComponent("policies"), upstreamPort: upstreamPort, pki: pki)
            let (httpPort, adminPort) = try policies.listenOnFixedPorts()
            try policies.write()
            try await Self.withServe(policies) { process, client in
                let admin = "http://127.0.0.1:\(adminPort)"
                func status(_ url: String) async -> Int? {
                    guard let response = try? await client.execute(HTTPClientRequest(url: url), timeout: .seconds(2)) else { return nil }
                    return Int(response.status.code)
                }
                try await eventually("the gateway is ready") { await status(admin + "/readyz") == 200 }

                process.signal(SIGHUP)
                try await eventually("SIGHUP reloaded the policies") {
                    process.standardOutput.contains(#""message":"policies reloaded""#) && process.standardOutput.contains(#""reason":"SIGHUP""#)
                }

                recorder.hold()
                let slow = Task {
                    var request = HTTPClientRequest(url: "http://127.0.0.1:\(httpPort)/v2/orders/17")
                    request.headers.add(name: "X-API-Key", value: TestKeys.acme)
                    let response = try await client.execute(request, timeout: .seconds(10))
                    return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1024)))
                }
                try await eventually("the request waits on its upstream") { recorder.heldCount == 1 }
                process.signal(SIGTERM)
                try await eventually("readiness reports draining") { await status(admin + "/readyz") == 503 }
                recorder.release()
                let (code, body) = try await slow.value
                #expect(code == 200 && body == #"{"order":"17"}"#)
                #expect(try await process.exitCode() == 0)
            }
        }
    }

    /// Standard output blocked (a FIFO nobody reads, like a stalled log collector): the gateway
    /// keeps answering partners — access lines wait for the log writer instead of holding up an
    /// event loop — and every line arrives once the output is read again.
    @Test func aBlockedStandardOutputDoesNotStopTheGateway() async throws {
        let root = try Self.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: root) }
        let fifo = root.appendingPathComponent("stdout").path
        #expect(mkfifo(fifo, 0o600) == 0)
        let reading = open(fifo, O_RDONLY | O_NONBLOCK)
        #expect(reading >= 0)
        defer { close(reading) }
        var received: [UInt8] = []
        func readAvailable() -> String {
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while case let count = read(reading, &buffer, buffer.count), count > 0 { received += buffer[0..<count] }
            return String(decoding: received, as: UTF8.self)
        }
        try await withDemoUpstream { upstreamPort in
            let pki = try TestPKI(directory: root.appendingPathComponent("pki"))
            var policies = TestPolicies(directory: root.appendingPathComponent("policies"), upstreamPort: upstreamPort, pki: pki)
            let (httpPort, adminPort) = try policies.listenOnFixedPorts()
            try policies.write()
            try await Self.withServe(policies, standardOutput: fifo) { process, client in
                func status(_ url: String, key: String? = nil) async -> Int? {
                    var request = HTTPClientRequest(url: url)
                    if let key { request.headers.add(name: "X-API-Key", value: key) }
                    guard let response = try? await client.execute(request, timeout: .seconds(5)) else { return nil }
                    _ = try? await response.body.collect(upTo: 1 << 20)
                    return Int(response.status.code)
                }
                try await eventually("the gateway is ready") { await status("http://127.0.0.1:\(adminPort)/readyz") == 200 }
                // About 500 KB of access lines: far more than the FIFO (64 KiB) and an event loop's
                // buffer (32 KiB) hold, far less than the writer's 8 MiB.
                let requests = 1_600
                let statuses = try await withThrowingTaskGroup(of: [Int?].self) { group in
                    for _ in 0..<8 {
                        group.addTask {
                            var statuses: [Int?] = []
                            for _ in 0..<(requests / 8) {
                                let answer = await status("http://127.0.0.1:\(httpPort)/v2/orders/17", key: TestKeys.acme)
                                statuses.append(answer)
                                if answer != 200 { break }  // a stalled gateway fails the test in one timeout
                            }
                            return statuses
                        }
                    }
                    return try await group.reduce(into: [Int?]()) { $0 += $1 }
                }
                try #require(statuses.count == requests && statuses.allSatisfy { $0 == 200 }, "\(Dictionary(grouping: statuses) { $0 }.mapValues(\.count))")
                try await eventually(timeout: .seconds(20), "every access line arrives once the output is read") {
                    readAvailable().components(separatedBy: #""message":"request""#).count - 1 >= requests
                }
                #expect(!readAvailable().contains("log lines dropped"))
                // What is left to write at exit (a few event lines) fits the FIFO.
                process.signal(SIGTERM)
                #expect(try await process.exitCode() == 0)
                #expect(readAvailable().contains(#""message":"shutting down: not ready, draining in-flight requests""#))
            }
        }
    }

    /// Runs `body` with `sluice serve` on `policies` and an HTTP client; when `body` throws,
    /// the process is killed.
    private static func withServe(
        _ policies: TestPolicies, standardOutput: String? = nil, _ body: (ChildProcess, HTTPClient) async throws -> Void
    ) async throws {
        let process = try SluiceProcess.start(["serve", "--policies", policies.directory.path], standardOutput: standardOutput)
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        do {
            try await body(process, client)
        } catch {
            process.signal(SIGKILL)
            _ = try? await process.exitCode()
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()
    }

    private static func temporaryFolder() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}
