import ArgumentParser
import Foundation
import SluiceCore

/// `sluice`: the gateway and the tools ops use with it. Exit codes: 0 ok, 1 user error
/// (bad flag, invalid policy, unknown id), 2 runtime failure.
@main
struct SluiceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice",
        abstract: "Sluice, the partner API gateway.",
        subcommands: [Serve.self, Policies.self, Keys.self, Report.self, Tasks.self, Webhooks.self, Cache.self, DemoUpstreamCommand.self]
    )

    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let exit as ExitCode {
            Foundation.exit(exit.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            Foundation.exit(1)
        }
    }
}

/// `--policies DIR`, shared by every command that reads the policies.
struct PolicyOptions: ParsableArguments {
    @Option(name: .long, help: "The policy folder.")
    var policies = "./policies"
}

/// Writes a line to standard error.
func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

/// Runs `open` (it loads the policies and connects to their store); invalid policies, or a store
/// the command cannot use, exit 1 with the problems on standard error.
func openOrExit<T>(_ open: () throws -> T) throws -> T {
    do {
        return try open()
    } catch let errors as PolicyErrors {
        for problem in errors.problems { printError(problem.description) }
        throw ExitCode(1)
    } catch {
        printError("sluice: \(error)")
        throw ExitCode(1)
    }
}
