/// The HTML form of a usage report: one self-contained page (inline CSS and SVG, no scripts, no
/// network loads) with, per partner, a summary, a chart of requests per day stacked by outcome,
/// and the table of rows.
extension UsageReport {
    /// The outcomes the chart stacks, bottom to top, with their colours.
    static let outcomes: [(name: String, colour: String, count: @Sendable (UsageCounts) -> Int64)] = [
        ("2xx", "#2e7d32", { $0.status2xx }),
        ("4xx", "#f9a825", { $0.status4xx - $0.limited }),
        ("limited (429)", "#6a1b9a", { $0.limited }),
        ("5xx", "#c62828", { $0.status5xx }),
    ]

    public func html(generatedAt: String) -> String {
        var page = """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>Sluice usage \(from.text) to \(to.text)</title>
            <style>
            body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
            h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #ccc;padding-bottom:4px}
            .meta{color:#666;margin:0 0 16px}
            .summary{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0 12px}
            .tile{border:1px solid #ddd;border-radius:6px;padding:6px 12px;min-width:100px}
            .tile b{display:block;font-size:18px} .tile span{color:#666;font-size:12px}
            .rows{overflow-x:auto;max-width:100%} table{border-collapse:collapse;font-size:12px;margin-top:8px}
            th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
            th{background:#f4f4f4} td.l,th.l{text-align:left} tr:nth-child(even) td{background:#fafafa}
            .legend{font-size:12px;margin:4px 0} .legend i{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
            svg text{font-size:11px;fill:#444}
            </style></head><body>
            <h1>Sluice partner usage</h1>
            <p class="meta">\(from.text) to \(to.text) (UTC, inclusive) · generated \(Self.escaped(generatedAt))</p>

            """
        if rows.isEmpty { page += "<p>No requests in this period.</p>\n" }
        for (partner, rows) in partners {
            page += section(partner: partner, rows: rows)
        }
        return page + "</body></html>\n"
    }

    private func section(partner: String, rows: [Row]) -> String {
        var total = UsageCounts()
        for row in rows { total.merge(row.counts) }
        let errorShare = total.requests == 0 ? 0 : Double(total.status4xx + total.status5xx) / Double(total.requests) * 100
        let tiles: [(String, String)] = [
            (Self.grouped(total.requests), "requests"), (Self.grouped(total.status2xx), "2xx"), (Self.grouped(total.status4xx), "4xx"),
            (Self.grouped(total.status5xx), "5xx"), (Self.grouped(total.limited), "limited (429)"),
            (Self.percent(errorShare), "error share (4xx+5xx)"),
            (total.latency.quantile(0.95).map { Self.milliseconds($0) + " ms" } ?? "–", "p95 latency"),
            (Self.grouped(total.replayed), "replayed"), (Self.grouped(total.cached), "cached"), (Self.grouped(total.tasks), "tasks"),
            (Self.bytes(total.bytesIn), "bytes in"), (Self.bytes(total.bytesOut), "bytes out"),
        ]
        var out = "<section>\n<h2>\(Self.escaped(partner))</h2>\n<div class=\"summary\">"
        for (value, label) in tiles { out += "<div class=\"tile\"><b>\(value)</b><span>\(label)</span></div>" }
        out += "</div>\n" + chart(rows: rows) + table(rows: rows) + "</section>\n"
        return out
    }

    /// Requests per day, stacked by outcome, one bar per day of the report.
    private func chart(rows: [Row]) -> String {
        var perDay: [Int: UsageCounts] = [:]
        for row in rows { perDay[row.key.day.number, default: UsageCounts()].merge(row.counts) }
        let days = Array(from.number...to.number)
        let width = 900.0, height = 220.0, left = 56.0, bottom = 28.0, top = 10.0
        let plotWidth = width - left - 10, plotHeight = height - top - bottom
        let highest = max(1, perDay.values.map(\.requests).max() ?? 1)
        let scale = Self.niceCeiling(highest)
        let slot = plotWidth / Double(days.count)
        let barWidth = max(1, slot * 0.8)
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" role=\"img\" aria-label=\"requests per day by outcome\">\n"
        for step in 0...4 {
            let value = scale * Int64(step) / 4
            let y = top + plotHeight - plotHeight * Double(step) / 4
            svg += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(width - 10))\" y2=\"\(f(y))\" stroke=\"#e0e0e0\"/>"
            svg += "<text x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(Self.grouped(value))</text>\n"
        }
        let labelEvery = max(1, Int((Double(days.count) / 10).rounded(.up)))
        for (position, day) in days.enumerated() {
            let x = left + Double(position) * slot + (slot - barWidth) / 2
            var y = top + plotHeight
            let counts = perDay[day] ?? UsageCounts()
            var tooltip = "\(UsageDay(number: day).text): \(counts.requests) requests"
            for outcome in Self.outcomes {
                let count = outcome.count(counts)
                guard count > 0 else { continue }
                tooltip += ", \(count) \(outcome.name)"
                let barHeight = plotHeight * Double(count) / Double(scale)
                y -= barHeight
                svg += "<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(barWidth))\" height=\"\(f(barHeight))\" fill=\"\(outcome.colour)\"/>"
            }
            svg += "<rect x=\"\(f(x))\" y=\"\(f(top))\" width=\"\(f(barWidth))\" height=\"\(f(plotHeight))\" fill=\"transparent\"><title>\(tooltip)</title></rect>\n"
            if position % labelEvery == 0 || position == days.count - 1 {
                let text = String(UsageDay(number: day).text.dropFirst(5))
                svg += "<text x=\"\(f(x + barWidth / 2))\" y=\"\(f(height - 10))\" text-anchor=\"middle\">\(text)</text>\n"
            }
        }
        svg += "<line x1=\"\(f(left))\" y1=\"\(f(top + plotHeight))\" x2=\"\(f(width - 10))\" y2=\"\(f(top + plotHeight))\" stroke=\"#888\"/>\n</svg>\n"
        var legend = "<div class=\"legend\">requests per day:"
        for outcome in Self.outcomes { legend += "<i style=\"background:\(outcome.colour)\"></i>\(outcome.name)" }
        return legend + "</div>\n" + svg
    }

    private func table(rows: [Row]) -> String {
        let headers = ["date", "version", "route", "requests", "2xx", "4xx", "5xx", "rate limited", "quota", "concurrency", "replayed", "cached", "tasks",
            "bytes in", "bytes out", "p50 ms", "p95 ms", "p99 ms"]
        var out = "<div class=\"rows\"><table><thead><tr>"
        for (index, header) in headers.enumerated() { out += index < 3 ? "<th class=\"l\">\(header)</th>" : "<th>\(header)</th>" }
        out += "</tr></thead><tbody>\n"
        for row in rows {
            let c = row.counts
            let cells = [c.requests, c.status2xx, c.status4xx, c.status5xx, c.rateLimited, c.quotaRejected, c.concurrencyLimited, c.replayed, c.cached, c.tasks,
                c.bytesIn, c.bytesOut].map(Self.grouped) + Self.quantiles.map { c.latency.quantile($0).map(Self.milliseconds) ?? "–" }
            out += "<tr><td class=\"l\">\(row.key.day.text)</td><td class=\"l\">\(Self.escaped(row.key.version))</td><td class=\"l\">\(Self.escaped(row.key.route))</td>"
            for cell in cells { out += "<td>\(cell)</td>" }
            out += "</tr>\n"
        }
        return out + "</tbody></table></div>\n"
    }

    private func f(_ value: Double) -> String { Self.milliseconds(value) }

    /// 1, 2 or 5 times a power of ten, at least `value`.
    static func niceCeiling(_ value: Int64) -> Int64 {
        var power: Int64 = 1
        while true {
            for factor: Int64 in [1, 2, 5] where factor * power >= value { return factor * power }
            power *= 10
        }
    }

    /// Digits in groups of three with thin spaces (12 345 678), for reading at a glance.
    static func grouped(_ value: Int64) -> String {
        let digits = Array(String(value.magnitude))
        var out = value < 0 ? "-" : ""
        for (index, digit) in digits.enumerated() {
            if index > 0, (digits.count - index) % 3 == 0 { out += "\u{202F}" }
            out.append(digit)
        }
        return out
    }

    static func percent(_ value: Double) -> String { milliseconds(value) + " %" }

    static func bytes(_ value: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var amount = Double(value), unit = 0
        while amount >= 1_024, unit < units.count - 1 {
            amount /= 1_024
            unit += 1
        }
        return unit == 0 ? "\(value) B" : "\(milliseconds((amount * 10).rounded() / 10)) \(units[unit])"
    }

    static func escaped(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(character)
            }
        }
        return out
    }
}
