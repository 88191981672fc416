/// A partner usage report (SPEC §6): one row per partner, day, version and route, in that order.
public struct UsageReport: Sendable {
    public struct Row: Sendable {
        public let key: UsageKey
        public let counts: UsageCounts
    }

    public let from: UsageDay
    public let to: UsageDay
    public let rows: [Row]

    public init(from: UsageDay, to: UsageDay, usage: UsageBatch) {
        self.from = from
        self.to = to
        rows = usage.filter { $0.key.day >= from && $0.key.day <= to && $0.value.requests > 0 }
            .sorted { a, b in
                (a.key.day, a.key.partner, a.key.version, a.key.route) < (b.key.day, b.key.partner, b.key.version, b.key.route)
            }
            .map { Row(key: $0.key, counts: $0.value) }
    }

    /// The CSV and JSON column names, in order.
    public static let columns = ["date", "partner", "version", "route"] + UsageCounts.counters.map(\.0) + ["p50_ms", "p95_ms", "p99_ms"]

    /// RFC 4180: a header row, CRLF line ends, fields quoted when they hold a comma, quote or line break.
    public func csv() -> String {
        var out = Self.columns.joined(separator: ",") + "\r\n"
        for row in rows {
            var fields = [row.key.day.text, row.key.partner, row.key.version, row.key.route].map(Self.csvField)
            fields += UsageCounts.counters.map { String(row.counts[keyPath: $0.1]) }
            fields += Self.quantiles.map { row.counts.latency.quantile($0).map(Self.milliseconds) ?? "" }
            out += fields.joined(separator: ",") + "\r\n"
        }
        return out
    }

    /// The rows as an array of objects with the CSV's column names (quantiles null without requests).
    public func json() -> String {
        var out = "["
        for (index, row) in rows.enumerated() {
            if index > 0 { out += "," }
            out += "\n{"
            for (name, value) in [("date", row.key.day.text), ("partner", row.key.partner), ("version", row.key.version), ("route", row.key.route)] {
                JSONValue.appendQuoted(name, to: &out)
                out += ":"
                JSONValue.appendQuoted(value, to: &out)
                out += ","
            }
            for (name, keyPath) in UsageCounts.counters {
                out += "\"\(name)\":\(row.counts[keyPath: keyPath]),"
            }
            for (position, (name, q)) in zip(["p50_ms", "p95_ms", "p99_ms"], Self.quantiles).enumerated() {
                out += "\"\(name)\":" + (row.counts.latency.quantile(q).map(Self.milliseconds) ?? "null")
                if position < 2 { out += "," }
            }
            out += "}"
        }
        return out + (rows.isEmpty ? "]\n" : "\n]\n")
    }

    /// Rows per partner, partners in name order.
    public var partners: [(partner: String, rows: [Row])] {
        Dictionary(grouping: rows, by: \.key.partner).sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    static let quantiles = [0.5, 0.95, 0.99]

    /// Milliseconds with up to two decimals.
    static func milliseconds(_ value: Double) -> String {
        let hundredths = Int64((value * 100).rounded())
        let whole = hundredths / 100, fraction = hundredths % 100
        return fraction == 0 ? String(whole) : "\(whole)." + (fraction < 10 ? "0" : "") + String(fraction).droppingTrailingZeros()
    }

    static func csvField(_ value: String) -> String {
        guard value.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return value }
        return "\"" + value.doublingQuotes() + "\""
    }
}

extension String {
    fileprivate func droppingTrailingZeros() -> String {
        var text = self
        while text.last == "0" { text.removeLast() }
        return text
    }

    fileprivate func doublingQuotes() -> String {
        split(separator: "\"", omittingEmptySubsequences: false).joined(separator: "\"\"")
    }
}
