/// What usage is counted by: partner, UTC day, API version and route (`-` when unknown, e.g. a
/// request for a path no route matches).
public struct UsageKey: Hashable, Sendable {
    public let day: UsageDay
    public let partner: String
    public let version: String
    public let route: String

    public init(day: UsageDay, partner: String, version: String, route: String) {
        self.day = day
        self.partner = partner
        self.version = version
        self.route = route
    }

    /// The label used for an unknown version or route.
    public static let unknown = "-"
}

/// A finished request, as usage counting sees it.
public struct UsageEvent: Sendable {
    public enum Refusal: Sendable { case rateLimited, quotaRejected, concurrencyLimited }

    public var status: Int
    public var refusal: Refusal?
    public var replayed = false
    /// Answered from the response cache.
    public var cached = false
    public var taskAccepted = false
    public var bytesIn: Int
    public var bytesOut: Int
    public var microseconds: Int64

    public init(status: Int, bytesIn: Int, bytesOut: Int, microseconds: Int64) {
        self.status = status
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.microseconds = microseconds
    }
}

/// The counts of one partner, day, version and route (SPEC §6). Limited requests are also
/// counted in `4xx` (they are 429s).
public struct UsageCounts: Sendable, Equatable {
    public var requests: Int64 = 0
    public var status2xx: Int64 = 0
    public var status4xx: Int64 = 0
    public var status5xx: Int64 = 0
    public var rateLimited: Int64 = 0
    public var quotaRejected: Int64 = 0
    public var concurrencyLimited: Int64 = 0
    public var replayed: Int64 = 0
    public var cached: Int64 = 0
    public var tasks: Int64 = 0
    public var bytesIn: Int64 = 0
    public var bytesOut: Int64 = 0
    public var latency = LatencyHistogram()

    public init() {}

    public mutating func count(_ event: UsageEvent) {
        requests += 1
        switch event.status {
        case 200..<300: status2xx += 1
        case 400..<500: status4xx += 1
        case 500..<600: status5xx += 1
        default: break
        }
        switch event.refusal {
        case .rateLimited: rateLimited += 1
        case .quotaRejected: quotaRejected += 1
        case .concurrencyLimited: concurrencyLimited += 1
        case nil: break
        }
        if event.replayed { replayed += 1 }
        if event.cached { cached += 1 }
        if event.taskAccepted { tasks += 1 }
        bytesIn += Int64(event.bytesIn)
        bytesOut += Int64(event.bytesOut)
        latency.record(microseconds: event.microseconds)
    }

    /// Requests refused by a limit (rate, quota or concurrency).
    public var limited: Int64 { rateLimited + quotaRejected + concurrencyLimited }

    public mutating func merge(_ other: UsageCounts) {
        for (_, keyPath) in Self.counters { self[keyPath: keyPath] += other[keyPath: keyPath] }
        latency.merge(other.latency)
    }

    /// The counters by their CSV (and JSON) names, in report order (key paths are immutable values).
    nonisolated(unsafe) public static let counters: [(String, WritableKeyPath<UsageCounts, Int64>)] = [
        ("requests", \.requests), ("2xx", \.status2xx), ("4xx", \.status4xx), ("5xx", \.status5xx),
        ("rate_limited", \.rateLimited), ("quota_rejected", \.quotaRejected), ("concurrency_limited", \.concurrencyLimited),
        ("replayed", \.replayed), ("cached", \.cached), ("tasks", \.tasks), ("bytes_in", \.bytesIn), ("bytes_out", \.bytesOut),
    ]

    /// The counters in the order the store keeps them: a counter added later goes last, so rows
    /// written by earlier gateways (which end before it) still read right.
    nonisolated(unsafe) public static let storedCounters: [WritableKeyPath<UsageCounts, Int64>] = [
        \.requests, \.status2xx, \.status4xx, \.status5xx, \.rateLimited, \.quotaRejected, \.concurrencyLimited, \.replayed, \.tasks,
        \.bytesIn, \.bytesOut, \.cached,
    ]

    /// The counts as the store keeps them: the counters in `storedCounters` order, then
    /// `bucket:count` per latency bucket hit, space-separated.
    public var storedText: String {
        var text = Self.storedCounters.map { String(self[keyPath: $0]) }.joined(separator: " ")
        for (index, count) in latency.counts.sorted(by: { $0.key < $1.key }) { text += " \(index):\(count)" }
        return text
    }

    /// Reads `storedText` (also an earlier gateway's, with fewer counters: the missing ones are
    /// 0); nil when it is not in that form.
    public init?(storedText text: String) {
        let tokens = text.split(separator: " ")
        let plain = tokens.prefix { !$0.contains(":") }
        guard plain.count >= 11, plain.count <= Self.storedCounters.count else { return nil }
        for (token, keyPath) in zip(plain, Self.storedCounters) {
            guard let value = Int64(token) else { return nil }
            self[keyPath: keyPath] = value
        }
        for token in tokens.dropFirst(plain.count) {
            guard let colon = token.firstIndex(of: ":"), let index = Int(token[..<colon]), let count = Int64(token[token.index(after: colon)...])
            else { return nil }
            latency.add(bucket: index, count: count)
        }
    }
}

/// Counts by key: what one flush writes, what a report reads.
public typealias UsageBatch = [UsageKey: UsageCounts]

extension Dictionary where Key == UsageKey, Value == UsageCounts {
    /// Adds every count of `other`.
    public mutating func merge(usage other: UsageBatch) {
        for (key, counts) in other { self[key, default: UsageCounts()].merge(counts) }
    }
}
