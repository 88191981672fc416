import NIOCore
import SluiceStore

/// What this instance holds in the store while requests run (concurrency leases, idempotency
/// claims), so that it can be renewed: a running request's lease or claim must not expire
/// under it, and a crashed instance's must. Kept per event loop (taken and given back on the
/// loop of its request), so recording one takes no lock; the renewal collects every loop's.
final class HeldRegistry<Entry: Sendable>: Sendable {
    /// Per loop: id → entry.
    private let held: LoopLocal<[String: Entry]>

    init(group: any EventLoopGroup) {
        held = LoopLocal(group: group) { _ in [:] }
    }

    /// Call on `eventLoop`.
    func add(_ id: String, _ entry: Entry, on eventLoop: any EventLoop) {
        held.update(on: eventLoop) { $0[id] = entry }
    }

    /// Call on `eventLoop`, the loop that added it.
    func remove(_ id: String, on eventLoop: any EventLoop) {
        held.update(on: eventLoop) { $0.removeValue(forKey: id) }
    }

    /// Everything held now, with its id.
    func all() async -> [(id: String, entry: Entry)] {
        await held.collect { $0.map { ($0.key, $0.value) } }.flatMap { $0 }
    }
}

/// An idempotency claim a running request holds.
struct HeldClaim: Sendable {
    let partner: String
    let claim: IdempotencyClaimRequest
}
