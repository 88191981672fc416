import NIOPosix
import TestSupport
import Testing
@testable import SluiceGateway

struct BulkheadTests {
    private func bulkhead(limit: Int, queueTimeout: Duration) -> Bulkhead {
        Bulkhead(limit: limit, queueTimeout: queueTimeout, eventLoop: MultiThreadedEventLoopGroup.singleton.next())
    }

    /// A call over the limit waits in line and gets the first slot given back.
    @Test func waitingCallGetsAReleasedSlot() async throws {
        let bulkhead = bulkhead(limit: 2, queueTimeout: .seconds(30))
        #expect(await bulkhead.acquire())
        #expect(await bulkhead.acquire())
        let third = Task { await bulkhead.acquire() }
        try await eventually("the third call waits") { bulkhead.waiting == 1 }
        bulkhead.release()
        #expect(await third.value)
        #expect(bulkhead.inUse == 2 && bulkhead.waiting == 0)
    }

    /// With queue_timeout 0 a call over the limit is refused at once.
    @Test func zeroQueueTimeoutRefusesAtOnce() async {
        let bulkhead = bulkhead(limit: 1, queueTimeout: .zero)
        #expect(await bulkhead.acquire())
        #expect(await bulkhead.acquire() == false)
        #expect(bulkhead.waiting == 0)
    }

    /// A call that waited out queue_timeout is refused and leaves the count intact.
    @Test func queueTimeoutRefuses() async {
        let bulkhead = bulkhead(limit: 1, queueTimeout: .milliseconds(20))
        #expect(await bulkhead.acquire())
        #expect(await bulkhead.acquire() == false)
        #expect(bulkhead.waiting == 0 && bulkhead.inUse == 1)
        bulkhead.release()
        #expect(bulkhead.inUse == 0)
        #expect(await bulkhead.acquire())
    }

    /// Slots go to waiting calls in the order they came.
    @Test func waitersAreServedInOrder() async throws {
        let bulkhead = bulkhead(limit: 1, queueTimeout: .seconds(30))
        #expect(await bulkhead.acquire())
        let first = Task { await bulkhead.acquire() }
        try await eventually("the first waits") { bulkhead.waiting == 1 }
        let second = Task { await bulkhead.acquire() }
        try await eventually("the second waits") { bulkhead.waiting == 2 }
        bulkhead.release()
        #expect(await first.value)
        #expect(bulkhead.waiting == 1)
        bulkhead.release()
        #expect(await second.value)
        #expect(bulkhead.inUse == 1)
    }
}
