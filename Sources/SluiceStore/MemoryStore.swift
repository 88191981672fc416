import Foundation
public import NIOCore
import NIOPosix
public import SluiceCore

/// The embedded store (`store.redis: null`): state lives in this process, so it serves one
/// instance. Partners are spread over shards, each with its own lock, so two partners rarely
/// contend. Also the local fallback while Redis is unreachable.
public final class MemoryStore: AdmissionStore {
    /// A partner's ledger, mutated in place under its shard's lock (no copy on write).
    private final class LedgerBox {
        var ledger = PartnerLedger()
    }

    private let ledgers = Sharded<[String: LedgerBox]> { [:] }
    let idempotency = IdempotencyTable()
    let tasks: TaskTable
    let usageTable: UsageTable
    let responses: ResponseCacheTable
    private let clock: EpochClock
    public let defaultEventLoop: any EventLoop

    /// - Parameters:
    ///   - clock: The time decisions use (tests inject a manual one).
    ///   - defaultEventLoop: Where the async forms run (decisions never wait, so any loop does).
    public init(clock: @escaping EpochClock = MemoryStore.wallClock, defaultEventLoop: (any EventLoop)? = nil) {
        self.clock = clock
        tasks = TaskTable(clock: clock)
        usageTable = UsageTable(clock: clock)
        responses = ResponseCacheTable(clock: clock)
        self.defaultEventLoop = defaultEventLoop ?? MultiThreadedEventLoopGroup.singleton.next()
    }

    /// The time of the store's clock, epoch milliseconds.
    func now() -> Int64 { clock() }

    public static let wallClock: EpochClock = { Int64((Date().timeIntervalSince1970 * 1_000).rounded(.down)) }

    /// Decides at once.
    public func decide(partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration) -> AdmissionDecision {
        let now = clock()
        return ledgers.withLock(partner) { ledgers in
            let box: LedgerBox
            if let existing = ledgers[partner] {
                box = existing
            } else {
                box = LedgerBox()
                ledgers[partner] = box
            }
            return box.ledger.admit(limits, lease: lease, leaseMilliseconds: leaseDuration.milliseconds, now: now)
        }
    }

    public func admit(
        partner: String, limits: AdmissionLimits, lease: String?, leaseDuration: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<AdmissionDecision, any Error>) -> Void
    ) {
        completion(.success(decide(partner: partner, limits: limits, lease: lease, leaseDuration: leaseDuration)))
    }

    public func release(partner: String, lease: String, on eventLoop: any EventLoop) {
        ledgers.withLock(partner) { $0[partner]?.ledger.release(lease) }
    }

    public func flushReleases() async {}

    public func renew(partner: String, leases: [String], leaseDuration: Duration) async throws {
        let now = clock()
        ledgers.withLock(partner) { $0[partner]?.ledger.renew(leases, leaseMilliseconds: leaseDuration.milliseconds, now: now) }
    }
}
