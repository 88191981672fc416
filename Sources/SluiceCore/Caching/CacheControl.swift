/// The `Cache-Control` directives a shared cache acts on (RFC 9111 §5.2, RFC 5861), read from
/// every line of the header. Unknown directives are ignored; a delta-seconds value that is not a
/// number counts as 0 (RFC 9111 §1.2.2: a cache treats an invalid `max-age` as stale).
public struct CacheControl: Sendable, Equatable {
    public var noStore = false
    public var noCache = false
    public var isPrivate = false
    /// `must-revalidate` or `proxy-revalidate`: never answered stale.
    public var mustRevalidate = false
    /// Seconds.
    public var maxAge: Int64?
    public var sharedMaxAge: Int64?
    public var staleWhileRevalidate: Int64?
    public var staleIfError: Int64?

    public init() {}

    /// The directives of `lines` (each a comma-separated list).
    public init(_ lines: some Sequence<some StringProtocol>) {
        for line in lines {
            for item in line.split(separator: ",") {
                let parts = item.split(separator: "=", maxSplits: 1)
                guard let rawName = parts.first else { continue }
                let name = rawName.trimmingASCIISpaces().lowercased()
                let value = parts.count > 1 ? Self.seconds(Substring(parts[1])) : nil
                switch name {
                case "no-store": noStore = true
                case "no-cache": noCache = true
                case "private": isPrivate = true
                case "must-revalidate", "proxy-revalidate": mustRevalidate = true
                case "max-age": maxAge = value ?? 0
                case "s-maxage": sharedMaxAge = value ?? 0
                case "stale-while-revalidate": staleWhileRevalidate = value ?? 0
                case "stale-if-error": staleIfError = value ?? 0
                default: break
                }
            }
        }
    }

    /// delta-seconds, optionally quoted; nil when it is not one (capped at 2^31, RFC 9111 §1.2.2).
    private static func seconds(_ text: Substring) -> Int64? {
        var digits = text.trimmingASCIISpaces()
        if digits.count >= 2, digits.hasPrefix("\""), digits.hasSuffix("\"") { digits = digits.dropFirst().dropLast() }
        guard !digits.isEmpty, digits.utf8.allSatisfy({ (48...57).contains($0) }) else { return nil }
        return digits.count > 10 ? 2_147_483_648 : min(Int64(digits) ?? 0, 2_147_483_648)
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs.
    func trimmingASCIISpaces() -> SubSequence {
        var text = self[...]
        while let first = text.first, first == " " || first == "\t" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
        return text
    }
}
