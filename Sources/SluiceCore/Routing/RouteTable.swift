/// What matching a request path and method against one version's routes found.
public enum RouteMatch<Route> {
    case found(Route, RouteParameters)
    /// The path exists but not for this method; `allow` is the `Allow` header value.
    case methodNotAllowed(allow: String)
    case notFound
}

/// The routes of one API version as a tree of path segments. Literal segments are tried before
/// parameters (`/orders/open` beats `/orders/{id}`), with backtracking.
public struct RouteTable<Route: Sendable>: Sendable {
    private final class Node: @unchecked Sendable {
        // Written only while the table is built, read-only afterwards.
        var literals: [Substring: Node] = [:]
        var parameter: Node?
        var routes: [String: (route: Route, names: [String])] = [:]
        var allow = ""
    }

    private let root = Node()

    public init(_ entries: [(method: String, template: PathTemplate, route: Route)]) {
        for entry in entries {
            var node = root
            for segment in entry.template.segments {
                switch segment {
                case .literal(let text):
                    let key = Substring(text)
                    if let next = node.literals[key] {
                        node = next
                    } else {
                        let next = Node()
                        node.literals[key] = next
                        node = next
                    }
                case .parameter:
                    if node.parameter == nil { node.parameter = Node() }
                    node = node.parameter!
                }
            }
            node.routes[entry.method] = (entry.route, entry.template.parameterNames)
        }
        finish(root)
    }

    /// HEAD is served by a GET route unless a HEAD route exists; `Allow` lists every method.
    private func finish(_ node: Node) {
        var methods = Set(node.routes.keys)
        if methods.contains("GET") { methods.insert("HEAD") }
        node.allow = methods.sorted().joined(separator: ", ")
        node.literals.values.forEach(finish)
        node.parameter.map(finish)
    }

    /// Matches `path` (starting with `/`, without query) for `method`.
    public func match(method: String, path: Substring) -> RouteMatch<Route> {
        var captures: [Substring] = []
        guard let node = find(root, path.utf8.dropFirst(), in: path, captures: &captures) else { return .notFound }
        if let entry = node.routes[method] ?? (method == "HEAD" ? node.routes["GET"] : nil) {
            return .found(entry.route, RouteParameters(names: entry.names, values: captures))
        }
        return .methodNotAllowed(allow: node.allow)
    }

    private func find(_ node: Node, _ rest: Substring.UTF8View.SubSequence, in path: Substring, captures: inout [Substring]) -> Node? {
        if rest.isEmpty { return node.routes.isEmpty ? nil : node }
        let end = rest.firstIndex(of: UInt8(ascii: "/")) ?? rest.endIndex
        let segment = Substring(path.utf8[rest.startIndex..<end])
        if segment.isEmpty { return nil }
        let remainder = end == rest.endIndex ? rest[end...] : rest[rest.index(after: end)...]
        if end != rest.endIndex && remainder.isEmpty { return nil }  // trailing slash
        if let next = node.literals[segment], let found = find(next, remainder, in: path, captures: &captures) {
            return found
        }
        if let next = node.parameter {
            captures.append(segment)
            if let found = find(next, remainder, in: path, captures: &captures) { return found }
            captures.removeLast()
        }
        return nil
    }
}
