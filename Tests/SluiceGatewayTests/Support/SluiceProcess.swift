import Foundation
import TestSupport

/// The `sluice` executable built next to the test bundle.
enum SluiceProcess {
    static var executable: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("sluice").path
    }

    /// Starts `sluice ARGUMENTS` (standard output to `standardOutput` when given).
    static func start(_ arguments: [String], environment: [String: String] = [:], standardOutput: String? = nil) throws -> ChildProcess {
        try ChildProcess(executable: executable, arguments, environment: environment, standardOutput: standardOutput)
    }

    /// Runs `sluice ARGUMENTS` to completion.
    static func run(_ arguments: [String], environment: [String: String] = [:]) async throws -> (code: Int32, stdout: String, stderr: String) {
        let process = try start(arguments, environment: environment)
        let code = try await process.exitCode()
        return (code, process.standardOutput, process.standardError)
    }
}
