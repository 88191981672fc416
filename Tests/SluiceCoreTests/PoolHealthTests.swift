import Testing
@testable import SluiceCore

/// Passive ejection, its growth and cap, probes, panic and reloads (SPEC §7), on a manual clock.
struct PoolHealthTests {
    private static func health(probes: Bool = false, maxEjected: Double = 0.5) -> UpstreamPolicy.Health {
        var health = UpstreamPolicy.Health()
        health.passive.ejection = .seconds(30)
        health.passive.maxEjection = .seconds(75)
        health.passive.maxEjected = maxEjected
        if probes {
            var active = UpstreamPolicy.Health.Active()
            active.healthy = 2
            active.unhealthy = 3
            health.active = active
        }
        return health
    }

    private static let t0 = TestInstant.seconds(0)

    @Test func ejectionGrowsInARowUpToTheMaximum() {
        var pool = PoolHealth<TestInstant>(count: 4, health: Self.health(), panicThreshold: 0.5)
        #expect(pool.failuresReached(1, now: .seconds(0)) == [.ejected(target: 1, reason: .failures, for: .seconds(30))])
        #expect(pool.eligible == TargetSet(bits: 0b1101))
        #expect(pool.nextReturn == .seconds(30))
        #expect(pool.refresh(now: .seconds(29)) == [])
        #expect(pool.refresh(now: .seconds(30)) == [.returned(target: 1)])
        // Ejected again within the last ejection's length of its return: twice as long, then capped.
        #expect(pool.failuresReached(1, now: .seconds(40)) == [.ejected(target: 1, reason: .failures, for: .seconds(60))])
        _ = pool.refresh(now: .seconds(100))
        #expect(pool.failuresReached(1, now: .seconds(110)) == [.ejected(target: 1, reason: .failures, for: .seconds(75))])
        _ = pool.refresh(now: .seconds(185))
        // Long after its return: a first ejection again.
        #expect(pool.failuresReached(1, now: .seconds(400)) == [.ejected(target: 1, reason: .failures, for: .seconds(30))])
    }

    @Test func atMostMaxEjectedAreOut() {
        var pool = PoolHealth<TestInstant>(count: 4, health: Self.health(), panicThreshold: 0.0)
        #expect(pool.failuresReached(0, now: Self.t0).count == 1)
        #expect(pool.failuresReached(1, now: Self.t0).count == 1)
        #expect(pool.failuresReached(2, now: Self.t0) == [], "two of four is max_ejected 50%")
        #expect(pool.failuresReached(0, now: Self.t0) == [], "already out")
        var single = PoolHealth<TestInstant>(count: 1, health: Self.health(maxEjected: 1), panicThreshold: 0.5)
        #expect(single.failuresReached(0, now: Self.t0).count == 1)
        var three = PoolHealth<TestInstant>(count: 3, health: Self.health(), panicThreshold: 0.5)
        _ = three.failuresReached(0, now: Self.t0)
        #expect(three.failuresReached(1, now: Self.t0) == [], "50% of three is one")
    }

    /// Below panic_threshold healthy, every target is eligible; no target at all only when the threshold is 0.
    @Test func panicSendsToAll() {
        var pool = PoolHealth<TestInstant>(count: 3, health: Self.health(probes: true, maxEjected: 1), panicThreshold: 0.5)
        for _ in 0..<3 { _ = pool.probed(0, good: false, now: Self.t0) }
        #expect(pool.eligible == TargetSet(bits: 0b110) && !pool.isPanicking)
        for _ in 0..<3 { _ = pool.probed(1, good: false, now: Self.t0) }
        #expect(pool.isPanicking && pool.eligible == .all(3))
        var strict = PoolHealth<TestInstant>(count: 1, health: Self.health(probes: true), panicThreshold: 0)
        for _ in 0..<3 { _ = strict.probed(0, good: false, now: Self.t0) }
        #expect(strict.eligible.isEmpty)
    }

    /// Probes: `unhealthy` bad in a row take a target out, `healthy` good in a row bring it back;
    /// an ejected target comes back only when its time is over and its probes are good.
    @Test func probesDecideWithThresholds() {
        var pool = PoolHealth<TestInstant>(count: 2, health: Self.health(probes: true), panicThreshold: 0)
        #expect(pool.probed(0, good: false, now: .seconds(1)) == [])
        #expect(pool.probed(0, good: false, now: .seconds(2)) == [])
        #expect(pool.probed(0, good: true, now: .seconds(3)) == [], "a good probe breaks the run")
        for second in 4...5 { #expect(pool.probed(0, good: false, now: .seconds(Double(second))) == []) }
        #expect(pool.probed(0, good: false, now: .seconds(6)) == [.ejected(target: 0, reason: .probes, for: nil)])
        #expect(pool.probed(0, good: true, now: .seconds(7)) == [])
        #expect(pool.probed(0, good: true, now: .seconds(8)) == [.returned(target: 0)])

        #expect(pool.failuresReached(1, now: .seconds(10)).count == 1)
        #expect(pool.refresh(now: .seconds(40)) == [], "its time is over but no good probe came since")
        #expect(pool.probed(1, good: true, now: .seconds(41)) == [])
        #expect(pool.probed(1, good: true, now: .seconds(42)) == [.returned(target: 1)])
    }

    /// A reload keeps the state of every target whose key did not change; new targets start in.
    @Test func reloadKeepsUnchangedTargets() {
        var pool = PoolHealth<TestInstant>(count: 3, health: Self.health(), panicThreshold: 0.5)
        _ = pool.failuresReached(1, now: Self.t0)
        let reloaded = PoolHealth(
            keys: ["b", "c", "d"], carrying: pool, previousKeys: ["a", "b", "c"], health: Self.health(), panicThreshold: 0.5
        )
        #expect(reloaded.targets[0] == pool.targets[1])
        #expect(reloaded.inTargets == TargetSet(bits: 0b110))
        #expect(reloaded.nextReturn == .seconds(30))
    }
}
