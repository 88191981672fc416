import NIOCore
import SluiceCore
import SluiceStore

/// Usage counting (SPEC §6) on the request path: each finished request of a known partner is
/// counted into its event loop's table, without a lock; `take()` empties every table for a flush.
final class UsageCounter: Sendable {
    private let tables: LoopLocal<UsageBatch>
    private let clock: EpochClock

    /// - Parameter clock: Decides the UTC day a request is counted on (tests inject one).
    init(group: any EventLoopGroup, clock: @escaping EpochClock) {
        tables = LoopLocal(group: group) { _ in [:] }
        self.clock = clock
    }

    /// Counts a finished request; call on `eventLoop`, the loop that served it. Requests
    /// without a partner (not authenticated) are not counted.
    func count(_ record: RequestRecord, status: Int, duration: Duration, on eventLoop: any EventLoop) {
        guard let partner = record.partner else { return }
        let key = UsageKey(
            day: UsageDay(epochMilliseconds: clock()), partner: partner, version: record.version ?? UsageKey.unknown,
            route: record.route ?? UsageKey.unknown
        )
        let event = record.usageEvent(status: status, duration: duration)
        tables.update(on: eventLoop) { $0[key, default: UsageCounts()].count(event) }
    }

    /// Every loop's counts since the last take; the tables start over.
    func take() async -> UsageBatch {
        var all: UsageBatch = [:]
        for table in await tables.collect({ table in
            defer { table = [:] }
            return table
        }) {
            all.merge(usage: table)
        }
        return all
    }
}
