import Testing
@testable import SluiceCore

/// A manual instant for driving `ConnectionTimeouts` without a real clock.
struct TestInstant: InstantProtocol, Sendable {
    var offset: Duration
    func advanced(by duration: Duration) -> TestInstant { TestInstant(offset: offset + duration) }
    func duration(to other: TestInstant) -> Duration { other.offset - offset }
    static func < (lhs: TestInstant, rhs: TestInstant) -> Bool { lhs.offset < rhs.offset }
    static func seconds(_ value: Double) -> TestInstant { TestInstant(offset: .milliseconds(Int64(value * 1_000))) }
}

struct ConnectionTimeoutsTests {
    private func machine() -> ConnectionTimeouts<TestInstant> {
        ConnectionTimeouts(headerTimeout: .seconds(10), idleTimeout: .seconds(60), now: .seconds(0))
    }

    /// A new connection must deliver its first request head within the header timeout.
    @Test func newConnectionMustSendAHeadInTime() {
        var timeouts = machine()
        #expect(timeouts.start() == .arm(.seconds(10)))
        #expect(timeouts.bytesReceived(now: .seconds(1)) == .none)  // trickling bytes do not extend it
        #expect(timeouts.timerFired(now: .seconds(10)) == .close)
    }

    /// Once the head arrived the body must keep flowing; each read moves the deadline without re-arming.
    @Test func bodyMustKeepFlowing() {
        var timeouts = machine()
        _ = timeouts.start()
        #expect(timeouts.requestHeadReceived(now: .seconds(2)) == .none)  // the armed timer stays
        #expect(timeouts.timerFired(now: .seconds(10)) == .arm(.seconds(62)))
        #expect(timeouts.bytesReceived(now: .seconds(30)) == .none)
        #expect(timeouts.timerFired(now: .seconds(62)) == .arm(.seconds(90)))
        #expect(timeouts.timerFired(now: .seconds(90)) == .close)
    }

    /// A body whose reads the gateway holds (its upstream is slow) is not idle however long the
    /// hold lasts; once reads resume, it must flow again within the idle timeout.
    @Test func heldBodyIsNotIdle() {
        var timeouts = machine()
        _ = timeouts.start()
        _ = timeouts.requestHeadReceived(now: .seconds(1))
        #expect(timeouts.bodyReadsHeld(now: .seconds(5)) == .none)
        #expect(timeouts.timerFired(now: .seconds(10)) == .none)  // no deadline while held
        #expect(timeouts.bodyReadsResumed(now: .seconds(600)) == .arm(.seconds(660)))
        #expect(timeouts.bytesReceived(now: .seconds(630)) == .none)
        #expect(timeouts.timerFired(now: .seconds(660)) == .arm(.seconds(690)))
        #expect(timeouts.timerFired(now: .seconds(690)) == .close)
    }

    /// On HTTP/2, one held stream body does not excuse another stream's stalled body.
    @Test func oneHeldBodyDoesNotExcuseAnother() {
        var timeouts = machine()
        _ = timeouts.start()
        timeouts.connectionIsMultiplexed()
        _ = timeouts.requestHeadReceived(now: .seconds(1))
        _ = timeouts.requestHeadReceived(now: .seconds(1))
        _ = timeouts.bodyReadsHeld(now: .seconds(2))
        #expect(timeouts.timerFired(now: .seconds(10)) == .arm(.seconds(61)))
        #expect(timeouts.timerFired(now: .seconds(61)) == .close)
        var ending = machine()
        _ = ending.start()
        ending.connectionIsMultiplexed()
        _ = ending.requestHeadReceived(now: .seconds(1))
        _ = ending.requestHeadReceived(now: .seconds(1))
        _ = ending.bodyReadsHeld(now: .seconds(2))
        _ = ending.requestBodyEnded(now: .seconds(3))  // the flowing one ends; the held one remains
        #expect(ending.timerFired(now: .seconds(10)) == .none)
    }

    /// While a complete request waits for its response, no timeout applies; afterwards the idle timeout does.
    @Test func waitingForTheUpstreamIsNotIdle() {
        var timeouts = machine()
        _ = timeouts.start()
        _ = timeouts.requestHeadReceived(now: .seconds(1))
        _ = timeouts.requestBodyEnded(now: .seconds(1))
        #expect(timeouts.timerFired(now: .seconds(10)) == .none)
        #expect(timeouts.responseEnded(now: .seconds(1_800)) == .arm(.seconds(1_860)))
        #expect(timeouts.timerFired(now: .seconds(1_860)) == .close)
    }

    /// On keep-alive, the next request's first byte starts a header deadline.
    @Test func nextRequestHeadIsTimedFromItsFirstByte() {
        var timeouts = machine()
        _ = timeouts.start()
        _ = timeouts.requestHeadReceived(now: .seconds(1))
        _ = timeouts.requestBodyEnded(now: .seconds(1))
        _ = timeouts.timerFired(now: .seconds(10))
        #expect(timeouts.responseEnded(now: .seconds(11)) == .arm(.seconds(71)))
        #expect(timeouts.bytesReceived(now: .seconds(20)) == .arm(.seconds(30)))  // earlier than the idle deadline
        #expect(timeouts.timerFired(now: .seconds(30)) == .close)
    }

    /// A deadline earlier than the armed timer re-arms it (idle shorter than the first head's timeout).
    @Test func earlierDeadlineRearms() {
        var timeouts = ConnectionTimeouts<TestInstant>(headerTimeout: .seconds(10), idleTimeout: .seconds(1), now: .seconds(0))
        #expect(timeouts.start() == .arm(.seconds(10)))
        #expect(timeouts.requestHeadReceived(now: .seconds(1)) == .arm(.seconds(2)))
        #expect(timeouts.requestBodyEnded(now: .seconds(1)) == .none)
        #expect(timeouts.responseEnded(now: .seconds(1.5)) == .none)  // 2.5 is later than the armed 2
        #expect(timeouts.timerFired(now: .seconds(2)) == .arm(.seconds(2.5)))
        #expect(timeouts.timerFired(now: .seconds(2.5)) == .close)
    }

    /// On HTTP/2, frames between requests (pings, settings) do not start a header deadline.
    @Test func multiplexedConnectionsOnlyIdleOut() {
        var timeouts = machine()
        _ = timeouts.start()
        timeouts.connectionIsMultiplexed()
        _ = timeouts.requestHeadReceived(now: .seconds(1))
        _ = timeouts.requestBodyEnded(now: .seconds(1))
        _ = timeouts.timerFired(now: .seconds(10))
        _ = timeouts.responseEnded(now: .seconds(2))
        #expect(timeouts.bytesReceived(now: .seconds(20)) == .none)
        #expect(timeouts.timerFired(now: .seconds(62)) == .close)
        var busy = machine()
        _ = busy.start()
        busy.connectionIsMultiplexed()
        _ = busy.requestHeadReceived(now: .seconds(1))
        _ = busy.requestHeadReceived(now: .seconds(1))
        _ = busy.requestBodyEnded(now: .seconds(1))
        _ = busy.requestBodyEnded(now: .seconds(1))
        _ = busy.responseEnded(now: .seconds(5))
        #expect(busy.timerFired(now: .seconds(500)) == .none)  // one stream still waits for its response
    }
}
