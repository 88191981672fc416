import ArgumentParser
import Foundation
import SluiceGateway

struct Cache: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The response cache in the store the policies name.",
        subcommands: [Purge.self]
    )

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a cached route's entries (every partner's, or one partner's).")

        @OptionGroup var options: PolicyOptions

        @Option(help: "The route id (from routes.yaml) whose entries go.")
        var route: String

        @Option(help: "Only this partner's entries.")
        var partner: String?

        func run() async throws {
            let opened = try openOrExit { try CachePurge.open(policiesDirectory: options.policies, environment: ProcessInfo.processInfo.environment) }
            guard let (purge, close) = opened else {
                printError("sluice: the policies use the embedded store: its cache lives inside the running gateway; use its admin listener (DELETE /admin/cache?route=…) or put the store on Redis")
                throw ExitCode(1)
            }
            do {
                let purged = try await purge.purge(route: route, partner: partner)
                await close()
                print("purged \(purged) entries of route '\(route)'" + (partner.map { " for partner '\($0)'" } ?? "")
                    + "; running gateways stop answering from them within \(CachePurge.reachesRunningGatewaysWithin)")
            } catch let refusal as CachePurge.Refusal {
                await close()
                printError("sluice: \(refusal)")
                throw ExitCode(1)
            } catch {
                await close()
                printError("sluice: the store did not answer: \(error)")
                throw ExitCode(2)
            }
        }
    }
}
