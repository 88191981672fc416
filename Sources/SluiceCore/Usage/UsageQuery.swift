/// What a usage report asks for (the CLI's `--from/--to/--partner`, the admin API's
/// `from/to/partner`), checked: real dates, `from` not after `to`, at most `maximumDays`, a
/// well-formed partner id.
public struct UsageQuery: Sendable, Equatable {
    public let from: UsageDay
    public let to: UsageDay
    public let partner: String?

    /// The longest period one report covers.
    public static let maximumDays = 1_000

    /// - Throws: `UsageQueryError` naming the parameter (`from`, `to`, `partner`) and the problem.
    public init(from: String?, to: String?, partner: String?) throws(UsageQueryError) {
        func day(_ name: String, _ text: String?) throws(UsageQueryError) -> UsageDay {
            guard let text else { throw UsageQueryError("\(name) is required (a UTC date as YYYY-MM-DD)") }
            guard let day = UsageDay(text) else {
                throw UsageQueryError(
                    "\(name) must be a UTC calendar date as YYYY-MM-DD from 1970-01-01 to 9999-12-31, got '\(UsageQueryError.shown(text))'"
                )
            }
            return day
        }
        self.from = try day("from", from)
        self.to = try day("to", to)
        guard self.from <= self.to else { throw UsageQueryError("from (\(self.from)) is after to (\(self.to)); to must be the same day or later") }
        let days = self.to.number - self.from.number + 1
        guard days <= Self.maximumDays else { throw UsageQueryError("from…to covers \(days) days; a report covers at most \(Self.maximumDays)") }
        if let partner, !APIKeyFactory.isValidPartnerID(partner) {
            throw UsageQueryError("partner must be a partner id (1-64 characters of a-z, A-Z, 0-9, '-' and '_'), got '\(UsageQueryError.shown(partner))'")
        }
        self.partner = partner
    }
}

/// Why a usage query is not valid; `description` is the message for the user.
public struct UsageQueryError: Error, CustomStringConvertible, Equatable {
    public let description: String

    public init(_ description: String) { self.description = description }

    /// A user's value in a message: at most 64 characters, control characters replaced.
    static func shown(_ text: String) -> String {
        String(text.unicodeScalars.prefix(64).map { $0.value < 0x20 || $0.value == 0x7F ? "?" : Character($0) })
    }
}
