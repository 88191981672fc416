/// UTC calendar windows for quotas, from epoch milliseconds. The Redis admission script does
/// the same arithmetic in Lua, so every gateway and the store agree on window boundaries.
public enum QuotaWindowCalendar {
    public static let dayMilliseconds: Int64 = 86_400_000

    /// The window containing `milliseconds`: an id that changes when a new window starts, and
    /// its start and end (exclusive) in epoch milliseconds.
    public static func window(_ per: LimitSet.QuotaWindow, at milliseconds: Int64) -> (id: Int64, start: Int64, end: Int64) {
        let day = floorDivide(milliseconds, dayMilliseconds)
        switch per {
        case .day:
            return (day, day * dayMilliseconds, (day + 1) * dayMilliseconds)
        case .month:
            let (year, month, _) = civil(fromDays: day)
            let first = days(fromCivil: year, month, 1)
            let next = month == 12 ? days(fromCivil: year + 1, 1, 1) : days(fromCivil: year, month + 1, 1)
            return (year * 12 + month - 1, first * dayMilliseconds, next * dayMilliseconds)
        }
    }

    /// Year, month, day of a day count since 1970-01-01 (H. Hinnant's civil_from_days).
    static func civil(fromDays days: Int64) -> (Int64, Int64, Int64) {
        let z = days + 719_468
        let era = floorDivide(z, 146_097)
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1_460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let shiftedMonth = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * shiftedMonth + 2) / 5 + 1
        let month = shiftedMonth < 10 ? shiftedMonth + 3 : shiftedMonth - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// Days since 1970-01-01 of a date (H. Hinnant's days_from_civil).
    static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = floorDivide(y, 400)
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    static func floorDivide(_ a: Int64, _ b: Int64) -> Int64 {
        let quotient = a / b
        return (a % b != 0 && (a < 0) != (b < 0)) ? quotient - 1 : quotient
    }
}
