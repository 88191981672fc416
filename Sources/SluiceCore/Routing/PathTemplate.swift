/// A route path such as `/orders/{id}/items`: literal segments and whole-segment parameters.
public struct PathTemplate: Sendable, Hashable, CustomStringConvertible {
    public enum Segment: Sendable, Hashable {
        case literal(String)
        case parameter(String)
    }

    public let segments: [Segment]

    /// Parses a template; returns a message describing the first problem otherwise.
    public static func parse(_ text: String) -> Result<PathTemplate, TemplateProblem> {
        guard text.hasPrefix("/") else { return .failure(.init("path must start with '/', got '\(text)'")) }
        if text == "/" { return .success(PathTemplate(segments: [])) }
        var segments: [Segment] = []
        var names: Set<String> = []
        for part in text.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            if part.isEmpty { return .failure(.init("path '\(text)' has an empty segment")) }
            if part.hasPrefix("{") || part.hasSuffix("}") || part.contains("{") || part.contains("}") {
                let name = part.dropFirst().dropLast()
                guard part.hasPrefix("{"), part.hasSuffix("}"), isParameterName(name) else {
                    return .failure(.init("path '\(text)': a parameter must be a whole segment like {id}, got '\(part)'"))
                }
                guard names.insert(String(name)).inserted else {
                    return .failure(.init("path '\(text)' uses parameter {\(name)} twice"))
                }
                segments.append(.parameter(String(name)))
            } else {
                guard part.utf8.allSatisfy(isPathCharacter), part != ".", part != ".." else {
                    return .failure(.init("path '\(text)' has an invalid segment '\(part)'"))
                }
                segments.append(.literal(String(part)))
            }
        }
        return .success(PathTemplate(segments: segments))
    }

    public struct TemplateProblem: Error, Equatable {
        public let message: String
        init(_ message: String) { self.message = message }
    }

    public var parameterNames: [String] {
        segments.compactMap { if case .parameter(let name) = $0 { name } else { nil } }
    }

    /// The template with parameter names erased: two routes with equal shapes match the same paths.
    public var shape: String {
        "/" + segments.map { if case .literal(let text) = $0 { text } else { "{}" } }.joined(separator: "/")
    }

    public var description: String {
        "/" + segments.map {
            switch $0 {
            case .literal(let text): text
            case .parameter(let name): "{\(name)}"
            }
        }.joined(separator: "/")
    }

    /// Fills the parameters with (still percent-encoded) values captured from a request path.
    public func render(_ parameters: RouteParameters) -> String {
        if segments.isEmpty { return "/" }
        var result = ""
        for segment in segments {
            result.append("/")
            switch segment {
            case .literal(let text): result.append(text)
            case .parameter(let name): result.append(contentsOf: parameters[name] ?? "")
            }
        }
        return result
    }

    private static func isParameterName(_ name: Substring) -> Bool {
        guard let first = name.utf8.first, !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else { return false }
        return name.utf8.allSatisfy { isAlphanumericASCII($0) || $0 == UInt8(ascii: "_") }
    }
}

/// Parameter values captured while matching a request path, by the names of the matched template.
public struct RouteParameters: Sendable, Equatable {
    public let names: [String]
    /// Still percent-encoded, as they appeared in the request path.
    public let values: [Substring]

    public init(names: [String], values: [Substring]) {
        self.names = names
        self.values = values
    }

    public subscript(name: String) -> Substring? {
        names.firstIndex(of: name).map { values[$0] }
    }
}

func isAlphanumericASCII(_ c: UInt8) -> Bool {
    (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
        || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c)
}

/// RFC 3986 `pchar` (unreserved, sub-delims, ':', '@', and '%' for escapes).
func isPathCharacter(_ c: UInt8) -> Bool {
    if isAlphanumericASCII(c) { return true }
    switch c {
    case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "!"), UInt8(ascii: "$"),
        UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "*"), UInt8(ascii: "+"),
        UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "="), UInt8(ascii: ":"), UInt8(ascii: "@"), UInt8(ascii: "%"):
        return true
    default:
        return false
    }
}
