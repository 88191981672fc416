public import Foundation

/// Parses the scalar formats of the policy files: durations, sizes, percentages, dates, addresses.
public enum PolicyValueParser {
    /// `250ms`, `5s`, `1.5s`, `2m`, `1h`, `30d`.
    public static func duration(_ text: String) -> Duration? {
        let units: [(suffix: String, milliseconds: Double)] = [
            ("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000),
        ]
        for unit in units where text.hasSuffix(unit.suffix) {
            let number = text.dropLast(unit.suffix.count)
            guard let value = decimal(number), value <= 1_000_000_000 else { continue }
            return .milliseconds(Int64((value * unit.milliseconds).rounded()))
        }
        return nil
    }

    /// `512KiB`, `10MiB`, `1GiB`, `100B` or a plain byte count.
    public static func size(_ text: String) -> Int? {
        let units: [(suffix: String, factor: Int)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("B", 1)]
        for unit in units where text.hasSuffix(unit.suffix) {
            guard let value = Int(text.dropLast(unit.suffix.count)), value >= 0, value <= (1 << 40) / unit.factor else {
                return nil
            }
            return value * unit.factor
        }
        guard let value = Int(text), value >= 0 else { return nil }
        return value
    }

    /// `50%` → 0.5; 0%…100%.
    public static func percentage(_ text: String) -> Double? {
        guard text.hasSuffix("%"), let value = decimal(text.dropLast()), value <= 100 else { return nil }
        return value / 100
    }

    /// `2026-10-01` (midnight UTC) or an RFC 3339 timestamp.
    public static func date(_ text: String) -> Date? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        if parts.count == 3, parts[0].count == 4, parts[1].count == 2, parts[2].count == 2,
            let year = Int(parts[0]), let month = Int(parts[1]), let day = Int(parts[2])
        {
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = TimeZone(identifier: "UTC")!
            let components = DateComponents(year: year, month: month, day: day)
            guard components.isValidDate(in: calendar) else { return nil }
            return calendar.date(from: components)
        }
        return try? Date(text, strategy: .iso8601)
    }

    /// `0.0.0.0:8443`, `127.0.0.1:9090`, `[::1]:8443`, `localhost:8080`.
    public static func listenAddress(_ text: String) -> ListenAddress? {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, !host.contains(where: { $0 == " " || $0 == "/" }),
            let port = Int(portText), (0...65535).contains(port)
        else { return nil }
        return ListenAddress(host: String(host), port: port)
    }

    private static func decimal(_ text: Substring) -> Double? {
        guard !text.isEmpty, text.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
            text.first != ".", text.last != "."
        else { return nil }
        return Double(text)
    }

    /// An OTLP/HTTP traces URL: `http(s)://host[:port][/path]`; without a path (or with `/`) the
    /// standard `/v1/traces` is appended. Nil when it is not such a URL.
    static func otlpTracesEndpoint(_ text: String) -> String? {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(), scheme == "http" || scheme == "https",
            let host = components.host, !host.isEmpty, components.user == nil, components.password == nil, components.fragment == nil, components.query == nil
        else { return nil }
        if components.path.isEmpty || components.path == "/" {
            return (text.hasSuffix("/") ? String(text.dropLast()) : text) + "/v1/traces"
        }
        return text
    }
}

/// A host and port: an address to listen on, or a server to reach (`RedisURL.Endpoint`).
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
