import ArgumentParser
import DemoUpstream
import Foundation
import Logging
import ServiceLifecycle

struct DemoUpstreamCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo-upstream",
        abstract: "Run a small backend for trying the gateway and for load tests."
    )

    @Option(help: "Port to listen on.")
    var port: Int

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(name: .customLong("delay-ms"), help: "Milliseconds added before every answer (a slower instance, for load tests).")
    var delayMilliseconds = 0

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0-65535") }
        guard (0...60_000).contains(delayMilliseconds) else { throw ValidationError("--delay-ms must be 0-60000") }
    }

    func run() async throws {
        EventLoopConcurrency.install()
        var logger = Logger(label: "demo-upstream")
        logger.logLevel = .warning
        let upstream = DemoUpstream(host: host, port: port, delay: .milliseconds(delayMilliseconds), logger: logger) { port in
            // Unbuffered: scripts and tests wait for this line.
            FileHandle.standardOutput.write(Data("demo upstream listening on http://\(host):\(port)\n".utf8))
        }
        let group = ServiceGroup(services: [upstream], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        do {
            try await group.run()
        } catch {
            printError("sluice demo-upstream: \(error)")
            throw ExitCode(2)
        }
    }
}
