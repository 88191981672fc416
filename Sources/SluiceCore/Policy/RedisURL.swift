import Foundation

/// Where the store's Redis is (SPEC §8): `redis://[user:pass@]host:port/db` (or `rediss://`,
/// TLS) for one Redis, `redis+sentinel://[user:pass@]s1:26379,s2:26379/MASTER[/DB]` (or
/// `rediss+sentinel://`) for the primary a set of sentinels names,
/// `redis+cluster://[user:pass@]n1:7000,n2:7001…` (or `rediss+cluster://`) for a Redis Cluster
/// found through its seed nodes (database 0 only). The credentials are the Redis's; sentinels
/// that want a password of their own get `?sentinel_password=…` (and `sentinel_user=…`).
public struct RedisURL: Sendable, Equatable, CustomStringConvertible {
    /// A host and port (a sentinel, the primary).
    public typealias Endpoint = ListenAddress

    /// How the Redis to use is found.
    public enum Topology: Sendable, Equatable {
        /// One Redis at `host:port`.
        case single
        /// The primary the sentinels know as `master`; `host:port` is the first sentinel.
        case sentinel(master: String, sentinels: [Endpoint], username: String?, password: String?)
        /// A Redis Cluster; its slot map is asked of these seed nodes (then of the nodes it names).
        case cluster(seeds: [Endpoint])
    }

    public var useTLS: Bool
    public var host: String
    public var port: Int
    public var username: String?
    public var password: String?
    public var database: Int
    public var topology: Topology = .single

    public struct ParseProblem: Error, Equatable {
        public var message: String
    }

    public static let sentinelPort = 26379

    public static func parse(_ text: String) -> Result<RedisURL, ParseProblem> {
        func fail(_ message: String) -> Result<RedisURL, ParseProblem> { .failure(ParseProblem(message: message)) }
        if text.hasPrefix("redis+sentinel://") || text.hasPrefix("rediss+sentinel://") {
            return parseSentinel(text)
        }
        if text.hasPrefix("redis+cluster://") || text.hasPrefix("rediss+cluster://") {
            return parseCluster(text)
        }
        guard let components = URLComponents(string: text), let scheme = components.scheme else {
            return fail("expected redis://[user:pass@]host:port/db, got '\(masked(text))'")
        }
        guard scheme == "redis" || scheme == "rediss" else {
            return fail("scheme must be redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster, got '\(scheme)'")
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

    /// `redis+sentinel://[user:pass@]host[:port],host[:port]…/MASTER[/DB][?sentinel_user=…&sentinel_password=…]`
    private static func parseSentinel(_ text: String) -> Result<RedisURL, ParseProblem> {
        func fail(_ message: String) -> Result<RedisURL, ParseProblem> { .failure(ParseProblem(message: message)) }
        let useTLS = text.hasPrefix("rediss+")
        var rest = Substring(text.dropFirst(useTLS ? "rediss+sentinel://".count : "redis+sentinel://".count))
        if rest.contains("#") { return fail("a fragment is not supported") }
        var query: Substring?
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let path = rest[slash...].split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        let sentinels: [Endpoint]
        let (username, password, authority) = credentials(rest[..<slash])
        switch endpoints(authority, kind: "sentinel", defaultPort: sentinelPort) {
        case .success(let found): sentinels = found
        case .failure(let problem): return .failure(problem)
        }
        guard let master = path.first, !master.isEmpty else {
            return fail("missing the master name: expected redis+sentinel://host:port,…/MASTER_NAME[/DB]")
        }
        var database = 0
        if path.count > 1 {
            guard path.count == 2, let number = Int(path[path.index(after: path.startIndex)]), number >= 0 else {
                return fail("expected /MASTER_NAME[/DB] after the sentinels, got '\(path.joined(separator: "/"))'")
            }
            database = number
        }
        var sentinelUser: String?
        var sentinelPassword: String?
        for pair in (query ?? "").split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            let value = parts.count == 2 ? String(parts[1]).removingPercentEncoding : nil
            switch parts.first {
            case "sentinel_password": sentinelPassword = value
            case "sentinel_user": sentinelUser = value
            default: return fail("unknown parameter '\(parts.first ?? "")' (sentinel_user and sentinel_password are known)")
            }
        }
        return .success(
            RedisURL(
                useTLS: useTLS, host: sentinels[0].host, port: sentinels[0].port, username: username, password: password, database: database,
                topology: .sentinel(master: String(master.removingPercentEncoding ?? String(master)), sentinels: sentinels, username: sentinelUser, password: sentinelPassword)
            )
        )
    }

    /// `redis+cluster://[user:pass@]host[:port],host[:port]…[/0]`: seed nodes, database 0 only.
    private static func parseCluster(_ text: String) -> Result<RedisURL, ParseProblem> {
        func fail(_ message: String) -> Result<RedisURL, ParseProblem> { .failure(ParseProblem(message: message)) }
        let useTLS = text.hasPrefix("rediss+")
        let rest = Substring(text.dropFirst(useTLS ? "rediss+cluster://".count : "redis+cluster://".count))
        if rest.contains("#") || rest.contains("?") { return fail("query and fragment are not supported") }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let path = rest[slash...].dropFirst()
        if !path.isEmpty, path != "0" {
            return fail("a Redis Cluster has database 0 only, got '/\(path)'")
        }
        let (username, password, authority) = credentials(rest[..<slash])
        switch endpoints(authority, kind: "seed node", defaultPort: 6379) {
        case .success(let seeds):
            return .success(
                RedisURL(
                    useTLS: useTLS, host: seeds[0].host, port: seeds[0].port, username: username, password: password, database: 0,
                    topology: .cluster(seeds: seeds)
                )
            )
        case .failure(let problem):
            return .failure(problem)
        }
    }

    /// Splits `user:pass@hosts` into the (percent-decoded) credentials and the host list.
    private static func credentials(_ authority: Substring) -> (username: String?, password: String?, hosts: Substring) {
        guard let at = authority.lastIndex(of: "@") else { return (nil, nil, authority) }
        let credentials = authority[..<at]
        let hosts = authority[authority.index(after: at)...]
        guard let colon = credentials.firstIndex(of: ":") else {
            return (String(credentials).removingPercentEncoding.flatMap { $0.isEmpty ? nil : $0 }, nil, hosts)
        }
        let username = String(credentials[..<colon]).removingPercentEncoding.flatMap { $0.isEmpty ? nil : $0 }
        return (username, String(credentials[credentials.index(after: colon)...]).removingPercentEncoding, hosts)
    }

    /// A comma-separated list of `kind`s (sentinels, seed nodes), at least one.
    private static func endpoints(_ list: Substring, kind: String, defaultPort: Int) -> Result<[Endpoint], ParseProblem> {
        guard !list.isEmpty else { return .failure(ParseProblem(message: "no \(kind) in the URL")) }
        var found: [Endpoint] = []
        for item in list.split(separator: ",", omittingEmptySubsequences: false) {
            switch endpoint(item, kind: kind, defaultPort: defaultPort) {
            case .success(let one): found.append(one)
            case .failure(let problem): return .failure(problem)
            }
        }
        return .success(found)
    }

    /// `host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to `defaultPort`.
    private static func endpoint(_ text: Substring, kind: String, defaultPort: Int) -> Result<Endpoint, ParseProblem> {
        func fail(_ message: String) -> Result<Endpoint, ParseProblem> { .failure(ParseProblem(message: message)) }
        var host = text
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return fail("unclosed '[' in \(kind) '\(text)'") }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return fail("bad \(kind) '\(text)'") }
                portText = after.dropFirst()
            }
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { return fail("a \(kind) without a host in the list") }
        guard host.allSatisfy({ $0.isLetter || $0.isNumber || "-._:".contains($0) }) else { return fail("bad \(kind) host '\(host)'") }
        var port = defaultPort
        if let portText {
            guard let number = Int(portText), (1...65535).contains(number) else { return fail("\(kind) port must be 1-65535, got '\(portText)'") }
            port = number
        }
        return .success(Endpoint(host: String(host), port: port))
    }

    /// `AUTH` for the Redis (nil when the URL has no password).
    public var authCommand: [String]? {
        password.map { password in username.map { ["AUTH", $0, password] } ?? ["AUTH", password] }
    }

    /// The URL without the passwords, for logs.
    public var description: String {
        let credentials = username.map { "\($0):***@" } ?? (password == nil ? "" : ":***@")
        switch topology {
        case .single:
            return "\(useTLS ? "rediss" : "redis")://\(credentials)\(Endpoint(host: host, port: port))/\(database)"
        case .sentinel(let master, let sentinels, _, _):
            return "\(useTLS ? "rediss" : "redis")+sentinel://\(credentials)\(sentinels.map(\.description).joined(separator: ","))/\(master)/\(database)"
        case .cluster(let seeds):
            return "\(useTLS ? "rediss" : "redis")+cluster://\(credentials)\(seeds.map(\.description).joined(separator: ","))"
        }
    }

    /// `text` without its credentials and query (a sentinel password may be there).
    private static func masked(_ text: String) -> String {
        let text = text.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        guard let at = text.lastIndex(of: "@"), let schemeEnd = text.range(of: "://") else { return text }
        return text[..<schemeEnd.upperBound] + "***" + text[at...]
    }
}
