import ArgumentParser
import Foundation
import SluiceCore

struct Policies: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with the policy files.",
        subcommands: [Check.self]
    )

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate every policy file: exit 0, or exit 1 printing FILE:LINE:COL: message per problem."
        )

        @OptionGroup var options: PolicyOptions

        func run() throws {
            do {
                let policy = try PolicyLoader.load(directory: options.policies, environment: ProcessInfo.processInfo.environment)
                print(
                    "\(options.policies): ok (version \(policy.versionHash): \(policy.partners.count) partners, "
                        + "\(policy.routes.routes.count) routes, \(policy.upstreams.count) upstreams)"
                )
            } catch {
                for problem in error.problems { print(problem.description) }
                throw ExitCode(1)
            }
        }
    }
}
