import ArgumentParser
import Foundation
import SluiceCore
import SluiceGateway

/// `sluice report`: partner usage from the store the policies name (SPEC §1, §6).
struct Report: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Partner usage report: one row per partner, UTC day, version and route.",
        discussion: "Dates are inclusive UTC days. csv and json carry the same columns; html is one self-contained page with a summary, a chart and a table per partner."
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case csv, json, html
    }

    @OptionGroup var options: PolicyOptions

    @Option(help: "First day, YYYY-MM-DD (UTC).")
    var from: String

    @Option(help: "Last day, YYYY-MM-DD (UTC, inclusive).")
    var to: String

    @Option(help: "Only this partner.")
    var partner: String?

    @Option(help: "csv, json or html.")
    var format: Format = .csv

    @Option(help: "Write the report to this file instead of standard output.")
    var out: String?

    func run() async throws {
        let query: UsageQuery
        do throws(UsageQueryError) {
            query = try UsageQuery(from: from, to: to, partner: partner)
        } catch {
            printError("sluice report: --" + error.description)
            throw ExitCode(1)
        }
        let reports = try openOrExit {
            try UsageReports.open(policiesDirectory: options.policies, environment: ProcessInfo.processInfo.environment)
        }
        let report: UsageReport
        do {
            report = try await reports.report(query)
            await reports.shutdown()
        } catch let error as UsageQueryError {
            await reports.shutdown()
            printError("sluice report: \(error)")
            throw ExitCode(1)
        } catch {
            await reports.shutdown()
            printError("sluice report: the store did not answer: \(error)")
            throw ExitCode(2)
        }
        let text = switch format {
        case .csv: report.csv()
        case .json: report.json()
        case .html: report.html(generatedAt: Date().formatted(.iso8601))
        }
        guard let out else { return FileHandle.standardOutput.write(Data(text.utf8)) }
        do {
            try Data(text.utf8).write(to: URL(fileURLWithPath: out), options: .atomic)
        } catch {
            printError("sluice report: cannot write \(out): \(error.localizedDescription)")
            throw ExitCode(1)
        }
    }
}
