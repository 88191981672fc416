import Foundation

/// `redis://[user:pass@]host:port/db` or `rediss://…` (TLS).
public struct RedisURL: Sendable, Equatable, CustomStringConvertible {
    public var useTLS: Bool
    public var host: String
    public var port: Int
    public var username: String?
    public var password: String?
    public var database: Int

    public struct ParseProblem: Error, Equatable {
        public var message: String
    }

    public static func parse(_ text: String) -> Result<RedisURL, ParseProblem> {
        func fail(_ message: String) -> Result<RedisURL, ParseProblem> { .failure(ParseProblem(message: message)) }
        guard let components = URLComponents(string: text), let scheme = components.scheme else {
            return fail("expected redis://[user:pass@]host:port/db, got '\(masked(text))'")
        }
        guard scheme == "redis" || scheme == "rediss" else {
            return fail("scheme must be redis or rediss, got '\(scheme)'")
        }
        guard let host = components.host, !host.isEmpty else { return fail("missing host in '\(masked(text))'") }
        let port = components.port ?? 6379
        guard (1...65535).contains(port) else { return fail("port must be 1-65535") }
        var database = 0
        let path = components.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        if !path.isEmpty {
            guard let number = Int(path), number >= 0 else {
                return fail("database must be a number, got '\(path)'")
            }
            database = number
        }
        if components.query != nil || components.fragment != nil {
            return fail("query and fragment are not supported")
        }
        return .success(
            RedisURL(
                useTLS: scheme == "rediss",
                host: host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host,
                port: port,
                username: components.user.flatMap { $0.isEmpty ? nil : $0.removingPercentEncoding },
                password: components.password?.removingPercentEncoding,
                database: database
            )
        )
    }

    /// The URL without the password, for logs.
    public var description: String {
        let credentials = username.map { "\($0):***@" } ?? (password == nil ? "" : ":***@")
        return "\(useTLS ? "rediss" : "redis")://\(credentials)\(host):\(port)/\(database)"
    }

    private static func masked(_ text: String) -> String {
        guard let at = text.lastIndex(of: "@"), let schemeEnd = text.range(of: "://") else { return text }
        return text[..<schemeEnd.upperBound] + "***" + text[at...]
    }
}
