import Testing
@testable import SluiceGateway

/// The wake-up that cuts a polling loop's wait short: at once, or when put-off work falls due.
struct WorkerWakeUpTests {
    /// A wake before the pause ends it at once; without one the pause runs out (and says so).
    @Test func wakeEndsThePause() async {
        let wakeUp = WorkerWakeUp()
        #expect(await wakeUp.pause(for: .milliseconds(40)) == false)
        wakeUp.wake()
        #expect(await wakeUp.pause(for: .seconds(60)))
    }

    /// An alarm ends a long pause once its delay has passed; the earliest of two alarms counts,
    /// and a rung alarm does not ring again.
    @Test func alarmEndsThePauseWhenWorkFallsDue() async {
        let wakeUp = WorkerWakeUp()
        let start = ContinuousClock.now
        wakeUp.wake(after: .seconds(3600))
        wakeUp.wake(after: .milliseconds(50))
        #expect(await wakeUp.pause(for: .seconds(60)))
        #expect(ContinuousClock.now - start >= .milliseconds(50))
        #expect(await wakeUp.pause(for: .milliseconds(40)) == false)
    }
}
