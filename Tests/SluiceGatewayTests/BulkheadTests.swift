import NIOCore
import NIOPosix
import Synchronization
import TestSupport
import Testing
@testable import SluiceGateway

struct BulkheadTests {
    private let eventLoop = MultiThreadedEventLoopGroup.singleton.next()

    /// Asks for a slot; a queued call is awaited until it is called back.
    private func acquire(_ bulkhead: Bulkhead) async -> Bool {
        await withCheckedContinuation { continuation in
            switch bulkhead.acquire(on: eventLoop, resume: { continuation.resume(returning: $0) }) {
            case .acquired: continuation.resume(returning: true)
            case .refused: continuation.resume(returning: false)
            case .queued: break
            }
        }
    }

    /// A call over the limit waits in line and gets the first slot given back.
    @Test func waitingCallGetsAReleasedSlot() async throws {
        let bulkhead = Bulkhead(limit: 2, queueTimeout: .seconds(30))
        #expect(await acquire(bulkhead))
        #expect(await acquire(bulkhead))
        let third = Task { await acquire(bulkhead) }
        try await eventually("the third call waits") { bulkhead.waiting == 1 }
        bulkhead.release()
        #expect(await third.value)
        #expect(bulkhead.inUse == 2 && bulkhead.waiting == 0)
    }

    /// With queue_timeout 0 a call over the limit is refused at once.
    @Test func zeroQueueTimeoutRefusesAtOnce() async {
        let bulkhead = Bulkhead(limit: 1, queueTimeout: .zero)
        #expect(await acquire(bulkhead))
        #expect(await acquire(bulkhead) == false)
        #expect(bulkhead.waiting == 0)
    }

    /// A call that waited out queue_timeout is refused and leaves the count intact.
    @Test func queueTimeoutRefuses() async {
        let bulkhead = Bulkhead(limit: 1, queueTimeout: .milliseconds(20))
        #expect(await acquire(bulkhead))
        #expect(await acquire(bulkhead) == false)
        #expect(bulkhead.waiting == 0 && bulkhead.inUse == 1)
        bulkhead.release()
        #expect(bulkhead.inUse == 0)
        #expect(await acquire(bulkhead))
    }

    /// Slots go to waiting calls in the order they came.
    @Test func waitersAreServedInOrder() async throws {
        let bulkhead = Bulkhead(limit: 1, queueTimeout: .seconds(30))
        #expect(await acquire(bulkhead))
        let first = Task { await acquire(bulkhead) }
        try await eventually("the first waits") { bulkhead.waiting == 1 }
        let second = Task { await acquire(bulkhead) }
        try await eventually("the second waits") { bulkhead.waiting == 2 }
        bulkhead.release()
        #expect(await first.value)
        #expect(bulkhead.waiting == 1)
        bulkhead.release()
        #expect(await second.value)
        #expect(bulkhead.inUse == 1)
    }

    /// A cancelled waiter is never called back and its place goes to the next.
    @Test func cancelledWaiterIsSkipped() async throws {
        let bulkhead = Bulkhead(limit: 1, queueTimeout: .seconds(30))
        #expect(await acquire(bulkhead))
        let calledBack = Atomic(false)
        guard case .queued(let waiter) = bulkhead.acquire(on: eventLoop, resume: { _ in calledBack.store(true, ordering: .relaxed) }) else {
            Issue.record("expected to wait")
            return
        }
        bulkhead.cancel(waiter)
        #expect(bulkhead.waiting == 0)
        bulkhead.release()
        #expect(bulkhead.inUse == 0 && !calledBack.load(ordering: .relaxed))
    }
}
