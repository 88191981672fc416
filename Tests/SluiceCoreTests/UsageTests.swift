import Foundation
@testable import SluiceCore
import Testing

struct UsageDayTests {
    @Test func parsesAndFormatsRealDatesOnly() {
        #expect(UsageDay("1970-01-01")?.number == 0)
        #expect(UsageDay("2000-02-29")?.text == "2000-02-29")
        #expect(UsageDay("2024-12-31").map { $0.adding(days: 1).text } == "2025-01-01")
        for bad in ["2100-02-29", "2026-13-01", "2026-04-31", "2026-1-01", "26-01-01", "2026/01/01", "", "2026-01-01T00:00", "１９７０-01-01", "1969-12-31"] {
            #expect(UsageDay(bad) == nil, "\(bad)")
        }
    }

    @Test func dayOfAnInstantIsItsUTCDay() {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate]
        formatter.timeZone = TimeZone(identifier: "UTC")
        for milliseconds: Int64 in [0, 86_399_999, 86_400_000, 951_782_400_000, 1_796_256_000_000, 4_106_376_000_000] {
            let expected = formatter.string(from: Date(timeIntervalSince1970: Double(milliseconds) / 1_000))
            #expect(UsageDay(epochMilliseconds: milliseconds).text == expected)
        }
    }
}

struct LatencyHistogramTests {
    /// Quantiles of histograms merged from several "instances" are within 10 % of the exact ones.
    @Test func mergedQuantilesAreWithinTenPercent() {
        var generator = SystemRandomNumberGenerator()
        var exact: [Int64] = []
        var merged = LatencyHistogram()
        for _ in 0..<3 {
            var instance = LatencyHistogram()
            for _ in 0..<5_000 {
                // Log-uniform from 0.2 ms to 20 s, the range a gateway sees.
                let microseconds = Int64(200 * pow(10, Double.random(in: 0..<5, using: &generator)))
                exact.append(microseconds)
                instance.record(microseconds: microseconds)
            }
            merged.merge(instance)
        }
        exact.sort()
        #expect(merged.total == 15_000)
        for q in [0.5, 0.95, 0.99] {
            let truth = Double(exact[Int((q * Double(exact.count)).rounded(.up)) - 1]) / 1_000
            let estimate = try! #require(merged.quantile(q))
            #expect(abs(estimate - truth) / truth <= 0.10, "q\(q): \(estimate) vs \(truth)")
        }
    }

    @Test func knownLatenciesGiveKnownQuantiles() {
        var histogram = LatencyHistogram()
        for _ in 0..<50 { histogram.record(microseconds: 10_000) }
        for _ in 0..<45 { histogram.record(microseconds: 100_000) }
        for _ in 0..<5 { histogram.record(microseconds: 2_000_000) }
        #expect(abs(histogram.quantile(0.5)! - 10) / 10 <= 0.05)
        #expect(abs(histogram.quantile(0.95)! - 100) / 100 <= 0.05)
        #expect(abs(histogram.quantile(0.99)! - 2_000) / 2_000 <= 0.05)
        #expect(LatencyHistogram().quantile(0.5) == nil)
        #expect(LatencyHistogram.index(microseconds: 0) == 0 && LatencyHistogram.index(microseconds: 99) == 0)
        #expect(LatencyHistogram.index(microseconds: 100) == 1 && LatencyHistogram.index(microseconds: 109) == 1)
        #expect(LatencyHistogram.index(microseconds: 111) == 2)
        #expect(LatencyHistogram.index(microseconds: .max) == LatencyHistogram.maxIndex)
    }
}

struct UsageReportTests {
    private let day = UsageDay("2026-03-01")!

    private func report() -> UsageReport {
        var orders = UsageCounts()
        var ok = UsageEvent(status: 201, bytesIn: 100, bytesOut: 50, microseconds: 12_000)
        ok.replayed = true
        orders.count(ok)
        var limited = UsageEvent(status: 429, bytesIn: 0, bytesOut: 200, microseconds: 300)
        limited.refusal = .rateLimited
        orders.count(limited)
        orders.count(UsageEvent(status: 502, bytesIn: 0, bytesOut: 120, microseconds: 30_000_000))
        var task = UsageEvent(status: 202, bytesIn: 10, bytesOut: 90, microseconds: 5_000)
        task.taskAccepted = true
        var quotes = UsageCounts()
        quotes.count(task)
        return UsageReport(from: day, to: day.adding(days: 1), usage: [
            UsageKey(day: day.adding(days: 1), partner: "acme", version: "v2", route: "orders"): orders,
            UsageKey(day: day, partner: "acme", version: "v2", route: "quote"): quotes,
            UsageKey(day: day.adding(days: 5), partner: "acme", version: "v2", route: "orders"): orders,
        ])
    }

    /// A row an earlier gateway stored (eleven counters, before `cached`) still reads, with
    /// `cached` 0; the stored form keeps the old counters' places.
    @Test func rowsStoredBeforeTheCachedCounterStillRead() throws {
        let old = try #require(UsageCounts(storedText: "5 4 1 0 0 0 0 2 1 100 900 3:2"))
        #expect(old.requests == 5 && old.replayed == 2 && old.tasks == 1 && old.bytesOut == 900 && old.cached == 0)
        #expect(old.latency.counts == [3: 2])
        var now = old
        now.cached = 3
        #expect(now.storedText == "5 4 1 0 0 0 0 2 1 100 900 3 3:2")
        #expect(UsageCounts(storedText: now.storedText) == now)
        #expect(UsageCounts(storedText: "5 4 1") == nil)
        #expect(UsageCounts(storedText: "1 2 3 4 5 6 7 8 9 10 11 12 13") == nil)
    }

    @Test func csvHasTheSpecHeaderAndOneRowPerKeyInOrder() {
        let lines = report().csv().components(separatedBy: "\r\n")
        #expect(
            lines[0]
                == "date,partner,version,route,requests,2xx,4xx,5xx,rate_limited,quota_rejected,concurrency_limited,replayed,cached,tasks,bytes_in,bytes_out,p50_ms,p95_ms,p99_ms"
        )
        #expect(lines.count == 4 && lines[3] == "")
        #expect(lines[1].hasPrefix("2026-03-01,acme,v2,quote,1,1,0,0,0,0,0,0,0,1,10,90,"))
        let orders = lines[2].split(separator: ",", omittingEmptySubsequences: false)
        #expect(orders.prefix(16).joined(separator: ",") == "2026-03-02,acme,v2,orders,3,1,1,1,1,0,0,1,0,0,100,370")
        #expect(orders.count == 19)
        let p99 = Double(orders[18])!
        #expect(abs(p99 - 30_000) / 30_000 <= 0.05)
    }

    @Test func csvQuotesFieldsWithCommasAndQuotes() {
        #expect(UsageReport.csvField("a,b") == "\"a,b\"")
        #expect(UsageReport.csvField("say \"hi\"") == "\"say \"\"hi\"\"\"")
        #expect(UsageReport.csvField("plain") == "plain")
    }

    @Test func jsonHasTheSameRowsAsObjects() throws {
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(report().json().utf8)) as? [[String: Any]])
        #expect(rows.count == 2)
        #expect(Set(rows[0].keys) == Set(UsageReport.columns))
        #expect(rows[1]["date"] as? String == "2026-03-02" && rows[1]["rate_limited"] as? Int == 1 && rows[1]["5xx"] as? Int == 1)
        #expect(rows[0]["tasks"] as? Int == 1)
        let empty = UsageReport(from: day, to: day, usage: [:]).json()
        #expect((try JSONSerialization.jsonObject(with: Data(empty.utf8)) as? [Any])?.isEmpty == true)
    }

    /// One self-contained page: no scripts, no external loads; per partner a summary, a chart and a table.
    @Test func htmlIsSelfContainedWithChartAndTable() {
        let html = report().html(generatedAt: "2026-03-03T00:00:00Z")
        #expect(html.hasPrefix("<!DOCTYPE html>"))
        for external in ["<script", "src=", "href=", "url(", "@import", "<link"] { #expect(!html.contains(external), "\(external)") }
        #expect(html.contains("<h2>acme</h2>"))
        #expect(html.components(separatedBy: "<svg").count == 2)
        #expect(html.contains("<title>2026-03-02: 3 requests, 1 2xx, 1 limited (429), 1 5xx</title>"))
        #expect(html.contains("<b>4</b><span>requests</span>"))
        #expect(UsageReport.grouped(1_234_567) == "1\u{202F}234\u{202F}567" && UsageReport.grouped(999) == "999")
        #expect(html.contains("<td class=\"l\">2026-03-01</td><td class=\"l\">v2</td><td class=\"l\">quote</td>"))
        #expect(UsageReport(from: day, to: day, usage: [:]).html(generatedAt: "x").contains("No requests in this period."))
        // Text from outside the report is escaped, so it cannot add markup or scripts.
        #expect(UsageReport.escaped("<script>alert('x')</script>&\"") == "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;")
        #expect(!UsageReport(from: day, to: day, usage: [:]).html(generatedAt: "<script>").contains("<script>"))
    }
}

struct UsageQueryTests {
    @Test func acceptsAValidQuery() throws {
        let query = try UsageQuery(from: "2026-01-01", to: "2026-01-31", partner: "acme")
        #expect(query.from.text == "2026-01-01" && query.to.text == "2026-01-31" && query.partner == "acme")
    }

    @Test func rejectsBadInputWithAClearMessage() {
        let cases: [(String?, String?, String?, String)] = [
            (nil, "2026-01-01", nil, "from is required"),
            ("2026-02-30", "2026-03-01", nil, "from must be a UTC calendar date as YYYY-MM-DD from 1970-01-01 to 9999-12-31, got '2026-02-30'"),
            ("1172-12-15", "2026-03-01", nil, "from must be a UTC calendar date as YYYY-MM-DD from 1970-01-01 to 9999-12-31, got '1172-12-15'"),
            ("2026-01-01", "yesterday", nil, "to must be a UTC calendar date as YYYY-MM-DD from 1970-01-01 to 9999-12-31, got 'yesterday'"),
            ("2026-02-01", "2026-01-01", nil, "from (2026-02-01) is after to (2026-01-01); to must be the same day or later"),
            ("2020-01-01", "2026-01-01", nil, "a report covers at most 1000"),
            ("2026-01-01", "2026-01-01", "acme;DROP", "partner must be a partner id"),
            ("2026-01-01\u{0}\n", "2026-01-01", nil, "got '2026-01-01??'"),
        ]
        for (from, to, partner, message) in cases {
            do {
                _ = try UsageQuery(from: from, to: to, partner: partner)
                Issue.record("accepted \(String(describing: from)) \(String(describing: to))")
            } catch {
                #expect(error.description.contains(message), "\(error.description)")
            }
        }
    }
}
