/// The health of one upstream's targets as a value (SPEC §7 `health`, `panic_threshold`),
/// driven by the gateway with what it saw and a clock it is given.
///
/// - **Passive**: after `consecutive_failures` failures the gateway saw (the caller counts
///   them) a target is ejected for `ejection × n`, at most `max_ejection`, where `n` counts
///   ejections in a row (an ejection within the previous one's length of its return is "in a
///   row"). No more than `max_ejected` of the pool (rounded down) is out at once; a pool of one
///   is never ejected (its circuit breaker speaks for it).
/// - **Return**: without probes, when the ejection time is over; with probes, once it is over
///   and the last `healthy` probes were good.
/// - **Active**: `unhealthy` bad probes in a row take a target out (not capped: a dead target
///   is out), `healthy` good probes in a row bring it back.
/// - **Panic**: while fewer than `panic_threshold` of the targets are in, calls may go to all.
public struct PoolHealth<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration, Instant: Sendable {
    /// Why a target is out.
    public enum Reason: String, Sendable {
        /// `consecutive_failures` calls failed.
        case failures = "consecutive-failures"
        /// `unhealthy` probes failed.
        case probes
    }

    public struct TargetState: Sendable, Equatable {
        /// Out until this time (passive ejection); nil when not ejected.
        public var ejectedUntil: Instant?
        /// Out because probes failed.
        public var probedDown = false
        /// Ejections in a row.
        public var ejections = 0
        /// When the last ejection ended, and how long it was.
        var lastReturn: (at: Instant, after: Duration)?
        public var goodProbes = 0
        public var badProbes = 0
        /// When the last probe answered, and whether it was good.
        public var lastProbe: (at: Instant, good: Bool)?
        public var isIn: Bool { ejectedUntil == nil && !probedDown }

        public static func == (a: TargetState, b: TargetState) -> Bool {
            a.ejectedUntil == b.ejectedUntil && a.probedDown == b.probedDown && a.ejections == b.ejections
                && a.goodProbes == b.goodProbes && a.badProbes == b.badProbes
        }
    }

    /// A change to log and count.
    public enum Event: Sendable, Equatable {
        case ejected(target: Int, reason: Reason, for: Duration?)
        case returned(target: Int)
    }

    public let health: UpstreamPolicy.Health
    public let panicThreshold: Double
    public private(set) var targets: [TargetState]

    public init(count: Int, health: UpstreamPolicy.Health, panicThreshold: Double) {
        self.health = health
        self.panicThreshold = panicThreshold
        targets = Array(repeating: TargetState(), count: count)
    }

    /// A new pool for changed targets that keeps the state of every target found in `previous`
    /// (by the key the caller gives each target).
    public init<Key: Hashable>(keys: [Key], carrying previous: PoolHealth, previousKeys: [Key], health: UpstreamPolicy.Health, panicThreshold: Double) {
        self.init(count: keys.count, health: health, panicThreshold: panicThreshold)
        var known: [Key: TargetState] = [:]
        for (key, state) in zip(previousKeys, previous.targets) { known[key] = state }
        for (index, key) in keys.enumerated() {
            if let state = known[key] { targets[index] = state }
        }
    }

    /// The targets that take calls now.
    public var inTargets: TargetSet {
        var set = TargetSet()
        for (index, target) in targets.enumerated() where target.isIn { set.insert(index) }
        return set
    }

    /// Where calls may go: the targets that are in, or all of them in panic.
    public var eligible: TargetSet {
        let healthy = inTargets
        if Double(healthy.count) < panicThreshold * Double(targets.count) { return .all(targets.count) }
        return healthy
    }

    /// Whether fewer than `panic_threshold` of the targets are in.
    public var isPanicking: Bool { Double(inTargets.count) < panicThreshold * Double(targets.count) }

    /// When the next ejection ends (the caller asks `refresh` then), if one is under way.
    public var nextReturn: Instant? {
        targets.compactMap(\.ejectedUntil).min()
    }

    /// `consecutive_failures` calls to `target` failed: it is ejected, unless it is out already
    /// or the pool has as many out as `max_ejected` allows.
    public mutating func failuresReached(_ index: Int, now: Instant) -> [Event] {
        guard targets[index].isIn else { return [] }
        let allowed = Int((health.passive.maxEjected * Double(targets.count)).rounded(.down))
        guard targets.count - inTargets.count < allowed else { return [] }
        var target = targets[index]
        if let last = target.lastReturn, now < last.at.advanced(by: last.after) {
            target.ejections += 1
        } else {
            target.ejections = 1
        }
        let length = min(health.passive.ejection * target.ejections, health.passive.maxEjection)
        target.ejectedUntil = now.advanced(by: length)
        target.goodProbes = 0
        targets[index] = target
        return [.ejected(target: index, reason: .failures, for: length)]
    }

    /// Ends the ejections that are over (with probes, only for targets whose recent probes were good).
    public mutating func refresh(now: Instant) -> [Event] {
        var events: [Event] = []
        for index in targets.indices {
            guard let until = targets[index].ejectedUntil, until <= now else { continue }
            if let active = health.active, targets[index].goodProbes < active.healthy { continue }
            let length = min(health.passive.ejection * targets[index].ejections, health.passive.maxEjection)
            targets[index].ejectedUntil = nil
            targets[index].lastReturn = (now, length)
            if targets[index].isIn { events.append(.returned(target: index)) }
        }
        return events
    }

    /// A probe of `target` answered (`good`: 2xx in time).
    public mutating func probed(_ index: Int, good: Bool, now: Instant) -> [Event] {
        guard let active = health.active else { return [] }
        var target = targets[index]
        let wasIn = target.isIn
        target.lastProbe = (now, good)
        if good {
            target.goodProbes += 1
            target.badProbes = 0
            if target.probedDown, target.goodProbes >= active.healthy { target.probedDown = false }
        } else {
            target.badProbes += 1
            target.goodProbes = 0
            if target.badProbes >= active.unhealthy { target.probedDown = true }
        }
        targets[index] = target
        var events: [Event] = []
        if wasIn && !target.isIn { events.append(.ejected(target: index, reason: .probes, for: nil)) }
        events += refresh(now: now)
        if !wasIn && targets[index].isIn && !events.contains(.returned(target: index)) { events.append(.returned(target: index)) }
        return events
    }
}
