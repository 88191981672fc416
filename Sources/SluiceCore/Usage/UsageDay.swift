/// A UTC calendar day (usage is counted per partner and day), as days since 1970-01-01.
public struct UsageDay: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// Days since 1970-01-01 (negative before).
    public let number: Int

    public init(number: Int) { self.number = number }

    /// The UTC day of an instant given in milliseconds since the epoch.
    public init(epochMilliseconds: Int64) {
        number = Int(QuotaWindowCalendar.floorDivide(epochMilliseconds, QuotaWindowCalendar.dayMilliseconds))
    }

    /// Parses a strict `YYYY-MM-DD` (a real calendar date, years 1970–9999).
    public init?(_ text: some StringProtocol) {
        let bytes = Array(text.utf8)
        guard bytes.count == 10, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-") else { return nil }
        func digits(_ range: Range<Int>) -> Int? {
            var value = 0
            for index in range {
                let byte = bytes[index]
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            return value
        }
        guard let year = digits(0..<4), let month = digits(5..<7), let day = digits(8..<10), year >= 1970,
            (1...12).contains(month), (1...Self.daysIn(month: month, year: year)).contains(day)
        else { return nil }
        number = Int(QuotaWindowCalendar.days(fromCivil: Int64(year), Int64(month), Int64(day)))
    }

    /// `YYYY-MM-DD`.
    public var text: String {
        let (year, month, day) = civil
        func padded(_ value: Int, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(padded(year, 4))-\(padded(month, 2))-\(padded(day, 2))"
    }

    public var description: String { text }

    /// Midnight UTC that starts the day, in seconds since the epoch.
    public var startEpochSeconds: Int64 { Int64(number) * 86_400 }

    public func adding(days: Int) -> UsageDay { UsageDay(number: number + days) }

    public static func < (lhs: UsageDay, rhs: UsageDay) -> Bool { lhs.number < rhs.number }

    /// (year, month, day).
    var civil: (Int, Int, Int) {
        let (year, month, day) = QuotaWindowCalendar.civil(fromDays: Int64(number))
        return (Int(year), Int(month), Int(day))
    }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }
}
