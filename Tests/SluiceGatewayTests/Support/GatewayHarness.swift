import AsyncHTTPClient
import DemoUpstream
import Foundation
import TestSupport
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
@testable import SluiceGateway

/// A real gateway on loopback in front of a real demo upstream, with HTTP/1.1 and HTTP/2
/// clients that trust the test CA.
struct GatewayHarness {
    let gateway: Gateway
    let addresses: Gateway.Addresses
    let policies: TestPolicies
    let pki: TestPKI
    let http1: HTTPClient
    let http2: HTTPClient
    let logFile: URL

    var https: String { "https://localhost:\(addresses.https!)" }
    var http: String { "http://127.0.0.1:\(addresses.http!)" }
    var admin: String { "http://127.0.0.1:\(addresses.admin!)" }

    /// Runs `body` against a fresh gateway; `configure` may change the policy files first.
    /// - Parameters:
    ///   - clock: The clock of the embedded store, the circuit breakers and the retry budgets
    ///     (default: the real clocks).
    ///   - shutdownTimeout: The drain limit when `body` is done (running tasks get half of it).
    ///   - usageFlushInterval: How often usage counts go to the store.
    ///   - resolver: How upstream target names resolve (default: the system's).
    ///   - claimLeaseMargin: How much longer than its route's timeout an idempotency claim lasts.
    static func with(
        _ configure: (inout TestPolicies) -> Void = { _ in },
        clock: ManualClock? = nil,
        shutdownTimeout: Duration = .seconds(30),
        usageFlushInterval: Duration = .milliseconds(100),
        claimLeaseMargin: Duration = .seconds(60),
        resolver: HostResolver? = nil,
        _ body: (GatewayHarness) async throws -> Void
    ) async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-test-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let pki = try TestPKI(directory: root.appendingPathComponent("pki"))
        try await withDemoUpstream { upstreamPort in
            var policies = TestPolicies(directory: root.appendingPathComponent("policies"), upstreamPort: upstreamPort, pki: pki)
            configure(&policies)
            try policies.write()

            let logFile = root.appendingPathComponent("gateway.log")
            let output = try LogOutput(appendingTo: logFile.path)
            var gatewayLogger = Logger(label: "sluice") { JSONLogHandler(label: $0, output: output) }
            gatewayLogger.logLevel = .info

            var options = Gateway.Options()
            options.handleSignals = false
            options.watchInterval = .milliseconds(100)
            options.storeGaugeInterval = .milliseconds(100)
            options.shutdownTimeout = shutdownTimeout
            options.usageFlushInterval = usageFlushInterval
            options.claimLeaseMargin = claimLeaseMargin
            options.logOutput = output
            if let resolver { options.resolver = resolver }
            if let clock {
                options.storeClock = clock.epochClock
                options.resilienceClock = clock.instantClock
            }
            let gateway = try Gateway(
                policiesDirectory: policies.directory.path, environment: [:], logger: gatewayLogger, options: options
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await gateway.run() }
                let addresses = await gateway.addresses()
                let configurations = (try clientConfiguration(pki, .http1Only), try clientConfiguration(pki, .automatic))
                let http1 = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configurations.0)
                let http2 = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configurations.1)
                let harness = GatewayHarness(
                    gateway: gateway, addresses: addresses, policies: policies, pki: pki, http1: http1, http2: http2, logFile: logFile
                )
                // Whatever happens from here, the clients are shut down: one dropped unshut is a
                // fatal error (AsyncHTTPClient), which ended a whole run when a starved machine's
                // gateway was not ready in time.
                var failure: (any Error)?
                do {
                    // As a load balancer would: wait until the gateway says it is ready.
                    try await eventually("the gateway is ready") {
                        (try? await harness.send(.GET, harness.admin + "/readyz", key: nil).status) == 200
                    }
                    try await body(harness)
                } catch {
                    failure = error
                }
                try? await http1.shutdown()
                try? await http2.shutdown()
                await gateway.shutdown()
                try await group.waitForAll()
                if let failure { throw failure }
            }
        }
    }

    static func clientConfiguration(_ pki: TestPKI, _ version: HTTPClient.Configuration.HTTPVersion) throws -> HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration(tlsConfiguration: try pki.clientTLS())
        configuration.httpVersion = version
        configuration.decompression = .disabled
        configuration.redirectConfiguration = .disallow
        // Well below the test policies' idle_timeout (10 s): the client never reuses a connection
        // the gateway is closing for idleness (a reset that a busy machine made likely at 1 s).
        configuration.connectionPool.idleTimeout = .seconds(5)
        return configuration
    }

    /// The log lines written so far, parsed.
    func logLines() throws -> [[String: Any]] {
        gatewayLogOutputFlush()
        let text = try String(contentsOf: logFile, encoding: .utf8)
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    private func gatewayLogOutputFlush() {
        gateway.flushLogs()
    }
}
