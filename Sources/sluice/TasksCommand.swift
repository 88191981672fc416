import ArgumentParser
import Foundation
import SluiceCore
import SluiceGateway

struct Tasks: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect async tasks in the store the policies name.",
        subcommands: [Show.self, List.self]
    )

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print one task as JSON: status, history, result, partner and route.")

        @OptionGroup var options: PolicyOptions

        @Argument(help: "The task id (tsk_…).")
        var id: String

        func run() async throws {
            let document = try await withTaskOperations(options) { try await $0.show(id) }
            guard let document else {
                printError("no task has the id '\(id)'")
                throw ExitCode(1)
            }
            print(String(decoding: document, as: UTF8.self))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tasks, newest first.")

        @OptionGroup var options: PolicyOptions

        @Option(help: "Only tasks with this status: queued, running, succeeded, failed or cancelled.")
        var status: String?

        @OptionGroup var listing: ListingOptions

        func validate() throws {
            if let status, TaskStatus(rawValue: status) == nil {
                throw ValidationError("--status must be one of \(TaskStatus.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }

        func run() async throws {
            let status = status.flatMap(TaskStatus.init(rawValue:))
            let (partner, limit) = (listing.partner, listing.limit)
            let document = try await withTaskOperations(options) { try await $0.list(status: status, partner: partner, limit: limit) }
            printListing(document, key: "tasks", json: listing.json, columns: ["task_id", "partner", "route", "status", "attempts", "created_at", "updated_at"])
        }
    }
}

struct Webhooks: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The webhook dead-letter queue in the store the policies name.",
        subcommands: [Dead.self, Redrive.self]
    )

    struct Dead: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead webhook messages with their last error, newest first.")

        @OptionGroup var options: PolicyOptions

        @OptionGroup var listing: ListingOptions

        func run() async throws {
            let (partner, limit) = (listing.partner, listing.limit)
            let document = try await withTaskOperations(options) { try await $0.deadWebhooks(partner: partner, limit: limit) }
            printListing(document, key: "webhooks", json: listing.json, columns: ["webhook_id", "task_id", "partner", "type", "attempts", "dead_at", "last_error"])
        }
    }

    struct Redrive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send dead messages again, with a fresh retry schedule.")

        @OptionGroup var options: PolicyOptions

        @Argument(help: "The webhook id (msg_…).")
        var id: String?

        @Flag(help: "Redrive every dead message (of --partner, if given).")
        var all = false

        @Option(help: "With --all: only messages of this partner.")
        var partner: String?

        func validate() throws {
            guard (id != nil) != all else { throw ValidationError("give a webhook id or --all, not both") }
            if partner != nil && !all { throw ValidationError("--partner goes with --all") }
            if let problem = TaskOperations.listingProblem(partner: partner, limit: 1) { throw ValidationError("--" + problem) }
        }

        func run() async throws {
            if let id {
                guard try await withTaskOperations(options, { try await $0.redrive(id) }) else {
                    printError("no dead webhook message has the id '\(id)'")
                    throw ExitCode(1)
                }
                print("\(id): scheduled")
            } else {
                let count = try await withTaskOperations(options) { try await $0.redriveAll(partner: partner) }
                print("\(count) dead message(s) scheduled")
            }
        }
    }
}

/// The filters and output form shared by the listing commands.
struct ListingOptions: ParsableArguments {
    @Option(help: "Only entries of this partner.")
    var partner: String?

    @Option(help: "At most this many entries (1-1000).")
    var limit = 100

    @Flag(help: "Print the JSON document instead of a table.")
    var json = false

    func validate() throws {
        if let problem = TaskOperations.listingProblem(partner: partner, limit: limit) { throw ValidationError("--" + problem) }
    }
}

/// Opens the store the policies name, runs `body`, and closes it. Invalid policies or the
/// embedded store exit 1; a store that does not answer exits 2.
private func withTaskOperations<T>(_ options: PolicyOptions, _ body: (TaskOperations) async throws -> T) async throws -> T {
    let operations = try openOrExit {
        try TaskOperations.open(policiesDirectory: options.policies, environment: ProcessInfo.processInfo.environment)
    }
    do {
        let result = try await body(operations)
        await operations.shutdown()
        return result
    } catch {
        await operations.shutdown()
        printError("sluice: the store did not answer: \(error)")
        throw ExitCode(2)
    }
}

/// Prints a listing document as JSON, or as a table of `columns` (tab-separated, with a header).
private func printListing(_ document: Data, key: String, json: Bool, columns: [String]) {
    guard !json else { return print(String(decoding: document, as: UTF8.self)) }
    let rows = ((try? JSONSerialization.jsonObject(with: document)) as? [String: Any])?[key] as? [[String: Any]] ?? []
    print(columns.joined(separator: "\t"))
    for row in rows {
        print(columns.map { column in
            switch row[column] {
            case let text as String: text
            case let number as NSNumber: number.stringValue
            default: "-"
            }
        }.joined(separator: "\t"))
    }
}
