public import SluiceCore
import SluiceStore

/// Usage reports from the store: one implementation behind `GET /admin/usage` and `sluice report`.
public struct UsageReports: Sendable {
    /// Why the CLI cannot read usage.
    public enum OpenError: Error, CustomStringConvertible {
        case embeddedStore

        public var description: String {
            "the policies use the embedded store: its usage counts live inside the running gateway; "
                + "ask its admin listener (GET /admin/usage?from=…&to=…) or put the store on Redis"
        }
    }

    let store: any UsageStore
    /// The partners the policies know.
    let partners: Set<String>
    private let close: @Sendable () async -> Void

    init(store: any UsageStore, partners: Set<String>, close: @escaping @Sendable () async -> Void = {}) {
        self.store = store
        self.partners = partners
        self.close = close
    }

    /// Connects to the Redis store the policies in `directory` name (the CLI's way in).
    /// - Throws: `PolicyErrors` for invalid policies, `OpenError.embeddedStore` without Redis.
    public static func open(policiesDirectory directory: String, environment: [String: String]) throws -> UsageReports {
        guard let (policy, store, client) = try OpsStore.open(policiesDirectory: directory, environment: environment) else { throw OpenError.embeddedStore }
        return UsageReports(store: store, partners: Set(policy.partners.map(\.id)), close: { await client.shutdown() })
    }

    /// Closes the store connection `open` made.
    public func shutdown() async {
        await close()
    }

    /// The report for `query`. A partner the policies do not name is unknown unless it has
    /// usage in the period (it was removed from the policies since).
    /// - Throws: `UsageQueryError` for an unknown partner; the store's error when it does not answer.
    public func report(_ query: UsageQuery) async throws -> UsageReport {
        let usage = try await store.usage(from: query.from, to: query.to, partner: query.partner)
        let report = UsageReport(from: query.from, to: query.to, usage: usage)
        if let partner = query.partner, !partners.contains(partner), report.rows.isEmpty {
            throw UsageQueryError("unknown partner '\(partner)': not in the policies and no usage from \(query.from) to \(query.to)")
        }
        return report
    }
}
