import Foundation
import Yams

/// A JSON value that keeps booleans, integers and other numbers apart (JSONSerialization does not).
indirect enum JSONNode: Decodable {
    case null, bool(Bool), integer(Int64), number(Double), string(String), array([JSONNode]), object([String: JSONNode])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Int64.self) { self = .integer(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSONNode].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONNode].self)) }
    }

    static func parse(_ data: Data) throws -> JSONNode { try JSONDecoder().decode(JSONNode.self, from: data) }
}

/// The subset of JSON Schema (2020-12, as OpenAPI 3.1 uses it) that `openapi.yaml` uses:
/// `$ref`, `type` (one or a list), `enum`, `const`, `required`, `properties`,
/// `additionalProperties`, `items`, `minimum`, `maximum`, `pattern`, `maxLength` and the
/// `date` / `date-time` formats. Returns what does not match, empty when the value is valid.
struct SchemaValidator {
    let document: [String: Any]

    init(yaml: String) throws {
        document = try Yams.load(yaml: yaml) as? [String: Any] ?? [:]
    }

    func resolve(_ schema: [String: Any]) -> [String: Any] {
        guard let reference = schema["$ref"] as? String, reference.hasPrefix("#/") else { return schema }
        var node: Any = document
        for part in reference.dropFirst(2).split(separator: "/") { node = (node as? [String: Any])?[String(part)] as Any }
        return resolve(node as? [String: Any] ?? [:])
    }

    func validate(_ value: JSONNode, _ schema: [String: Any], at path: String = "$") -> [String] {
        let schema = resolve(schema)
        var problems: [String] = []
        if let types = (schema["type"] as? String).map({ [$0] }) ?? schema["type"] as? [String], !types.contains(where: { Self.matches(value, type: $0) }) {
            return ["\(path): \(value) is not \(types.joined(separator: " or "))"]
        }
        if let options = schema["enum"] as? [Any], !options.contains(where: { Self.equal(value, $0) }) { problems.append("\(path): \(value) is not one of \(options)") }
        if let constant = schema["const"], !Self.equal(value, constant) { problems.append("\(path): \(value) is not \(constant)") }
        switch value {
        case .object(let members):
            for name in schema["required"] as? [Any] ?? [] where members["\(name)"] == nil { problems.append("\(path): '\(name)' is missing") }
            let properties = schema["properties"] as? [String: Any] ?? [:]
            for (name, member) in members {
                if let property = properties[name] as? [String: Any] {
                    problems += validate(member, property, at: "\(path).\(name)")
                } else if schema["additionalProperties"] as? Bool == false {
                    problems.append("\(path): '\(name)' is not described")
                } else if let additional = schema["additionalProperties"] as? [String: Any] {
                    problems += validate(member, additional, at: "\(path).\(name)")
                }
            }
        case .array(let items):
            if let itemSchema = schema["items"] as? [String: Any] {
                for (index, item) in items.enumerated() { problems += validate(item, itemSchema, at: "\(path)[\(index)]") }
            }
        case .integer(let number):
            problems += bounds(Double(number), schema, path)
        case .number(let number):
            problems += bounds(number, schema, path)
        case .string(let text):
            if let pattern = schema["pattern"] as? String, text.range(of: pattern, options: .regularExpression) == nil {
                problems.append("\(path): '\(text)' does not match \(pattern)")
            }
            if let maxLength = schema["maxLength"] as? Int, text.count > maxLength { problems.append("\(path): longer than \(maxLength)") }
            switch schema["format"] as? String {
            case "date-time" where text.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})/) == nil:
                problems.append("\(path): '\(text)' is not a date-time")
            case "date" where text.wholeMatch(of: /\d{4}-\d{2}-\d{2}/) == nil:
                problems.append("\(path): '\(text)' is not a date")
            default: break
            }
        default: break
        }
        return problems
    }

    private func bounds(_ number: Double, _ schema: [String: Any], _ path: String) -> [String] {
        var problems: [String] = []
        if let minimum = Self.double(schema["minimum"]), number < minimum { problems.append("\(path): \(number) < \(minimum)") }
        if let maximum = Self.double(schema["maximum"]), number > maximum { problems.append("\(path): \(number) > \(maximum)") }
        return problems
    }

    private static func double(_ value: Any?) -> Double? {
        (value as? Int).map(Double.init) ?? value as? Double
    }

    private static func matches(_ value: JSONNode, type: String) -> Bool {
        switch (value, type) {
        case (.null, "null"), (.bool, "boolean"), (.integer, "integer"), (.integer, "number"), (.number, "number"), (.string, "string"),
            (.array, "array"), (.object, "object"):
            true
        default: false
        }
    }

    private static func equal(_ value: JSONNode, _ expected: Any) -> Bool {
        switch value {
        case .string(let text): (expected as? String) == text
        case .integer(let number): (expected as? Int).map { Int64($0) == number } ?? false
        case .bool(let flag): (expected as? Bool) == flag
        default: false
        }
    }

    /// The response schema `openapi.yaml` gives for `method` on `path` (a concrete path, matched
    /// against the templates) with `status` and `contentType`; nil when it documents none.
    func responseSchema(method: String, path: String, status: Int, contentType: String) -> [String: Any]? {
        let paths = document["paths"] as? [String: Any] ?? [:]
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        let candidates = paths.keys.filter { template in
            let parts = template.split(separator: "/", omittingEmptySubsequences: false)
            return parts.count == segments.count && zip(parts, segments).allSatisfy { $0.hasPrefix("{") || $0 == $1 }
        }
        // The most literal template wins (`/{version}/tasks/{taskId}` over `/{version}/{asyncRoute}`).
        guard let template = candidates.max(by: { $0.filter { $0 == "{" }.count > $1.filter { $0 == "{" }.count }),
            let operation = (paths[template] as? [String: Any])?[method.lowercased()] as? [String: Any],
            let response = (operation["responses"] as? [String: Any])?[String(status)] as? [String: Any]
        else { return nil }
        let resolved = resolve(response)
        let media = contentType.split(separator: ";").first.map { String($0).trimmingCharacters(in: .whitespaces) } ?? contentType
        guard let content = (resolved["content"] as? [String: Any])?[media] as? [String: Any] else { return nil }
        return content["schema"] as? [String: Any] ?? [:]
    }
}
