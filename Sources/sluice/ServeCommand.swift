import ArgumentParser
import Foundation
import Logging
import Metrics
import NIOCore
import SluiceCore
import SluiceGateway

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the gateway; SIGTERM/SIGINT drain gracefully, SIGHUP reloads the policies."
    )

    @OptionGroup var options: PolicyOptions

    @Option(help: "Log level: trace, debug, info, notice, warning, error or critical (default: SLUICE_LOG_LEVEL or info).")
    var logLevel: String?

    @Option(help: "Event-loop threads that serve traffic (default: one per CPU core).")
    var threads: Int?

    func validate() throws {
        if let threads, !(1...256).contains(threads) { throw ValidationError("--threads must be between 1 and 256") }
    }

    func run() async throws {
        if let threads { NIOSingletons.groupLoopCountSuggestion = threads }
        EventLoopConcurrency.install()
        let environment = ProcessInfo.processInfo.environment
        guard let level = Logger.Level(rawValue: logLevel ?? environment["SLUICE_LOG_LEVEL"] ?? "info") else {
            printError("unknown log level '\(logLevel ?? "")'")
            throw ExitCode(1)
        }
        let output = LogOutput.standardOutput
        LoggingSystem.bootstrap { label in
            var handler = JSONLogHandler(label: label, output: output)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "sluice")

        var gatewayOptions = Gateway.Options()
        gatewayOptions.logOutput = output
        let gateway: Gateway
        do {
            gateway = try Gateway(policiesDirectory: options.policies, environment: environment, logger: logger, options: gatewayOptions)
        } catch {
            for problem in error.problems { printError(problem.description) }
            printError("sluice: the policies have \(error.problems.count) problem(s); not starting")
            throw ExitCode(1)
        }
        MetricsSystem.bootstrap(gateway.metricsFactory)
        do {
            try await gateway.run()
        } catch {
            logger.critical("gateway stopped", metadata: ["error": "\(error)"])
            output.flush()
            printError("sluice: \(error)")
            throw ExitCode(2)
        }
        output.flush()
    }
}
