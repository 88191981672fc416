import Foundation
import Yams

/// Collects problems while a policy set is read, so that all of them are reported at once.
final class Diagnostics {
    private(set) var problems: [PolicyProblem] = []

    func report(_ location: SourceLocation, _ message: String) {
        problems.append(PolicyProblem(location, message))
    }
}

/// A YAML node of one policy file with its position; typed accessors report a problem and
/// return nil when the value does not have the expected shape.
struct YAMLValue {
    let node: Node
    let location: SourceLocation
    let diagnostics: Diagnostics
    /// Resolves `env:NAME` secrets.
    let environment: [String: String]

    init(node: Node, file: String, diagnostics: Diagnostics, environment: [String: String]) {
        self.node = node
        self.location = SourceLocation(file: file, line: node.mark?.line ?? 1, column: node.mark?.column ?? 1)
        self.diagnostics = diagnostics
        self.environment = environment
    }

    private init(node: Node, location: SourceLocation, diagnostics: Diagnostics, environment: [String: String]) {
        self.node = node
        self.location = location
        self.diagnostics = diagnostics
        self.environment = environment
    }

    func child(_ node: Node) -> YAMLValue {
        YAMLValue(node: node, file: location.file, diagnostics: diagnostics, environment: environment)
    }

    func report(_ message: String) {
        diagnostics.report(location, message)
    }

    /// The resolved YAML tag (`!!int`, `!!str`, …).
    private var tagName: Tag.Name { Tag.Name(rawValue: node.tag.rawValue) }

    var isNull: Bool {
        if case .scalar(let scalar) = node, scalar.style == .plain || scalar.style == .any {
            return tagName == .null
        }
        return false
    }

    /// A short rendering of the value for messages.
    var shown: String {
        switch node {
        case .scalar(let scalar): return "'\(scalar.string)'"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    func mapping(_ context: String) -> MappingReader? {
        guard case .mapping(let mapping) = node else {
            report("expected a mapping for \(context), got \(shown)")
            return nil
        }
        return MappingReader(value: self, mapping: mapping, context: context)
    }

    func sequence(_ context: String) -> [YAMLValue]? {
        guard case .sequence(let sequence) = node else {
            report("expected a list for \(context), got \(shown)")
            return nil
        }
        return sequence.map(child)
    }

    /// Any non-null scalar, as written.
    func string(_ context: String) -> String? {
        guard case .scalar(let scalar) = node, !isNull else {
            report("expected a string for \(context), got \(isNull ? "null" : shown)")
            return nil
        }
        return scalar.string
    }

    /// A string that may be given as `env:NAME`, read from the environment at load time.
    func secret(_ context: String) -> String? {
        guard let raw = string(context) else { return nil }
        guard raw.hasPrefix("env:") else { return raw }
        let name = String(raw.dropFirst(4))
        guard !name.isEmpty else {
            report("\(context): 'env:' needs a variable name")
            return nil
        }
        guard let value = environment[name] else {
            report("\(context): environment variable \(name) is not set")
            return nil
        }
        return value
    }

    func int(_ context: String, min: Int? = nil, max: Int? = nil) -> Int? {
        guard case .scalar(let scalar) = node, tagName == .int, let value = Int(scalar.string) else {
            report("expected an integer for \(context), got \(shown)")
            return nil
        }
        if let min, value < min {
            report("\(context) must be at least \(min), got \(value)")
            return nil
        }
        if let max, value > max {
            report("\(context) must be at most \(max), got \(value)")
            return nil
        }
        return value
    }

    func positiveNumber(_ context: String) -> Double? {
        guard case .scalar(let scalar) = node, tagName == .int || tagName == .float,
            let value = Double(scalar.string), value.isFinite
        else {
            report("expected a number for \(context), got \(shown)")
            return nil
        }
        guard value > 0 else {
            report("\(context) must be greater than 0, got \(scalar.string)")
            return nil
        }
        return value
    }

    func bool(_ context: String) -> Bool? {
        guard tagName == .bool, let value = node.bool else {
            report("expected true or false for \(context), got \(shown)")
            return nil
        }
        return value
    }

    func duration(_ context: String, allowZero: Bool = false) -> Duration? {
        guard let text = scalarText(context) else { return nil }
        guard let duration = PolicyValueParser.duration(text) else {
            report("expected a duration like 250ms, 5s, 2m, 1h or 30d for \(context), got '\(text)'")
            return nil
        }
        if !allowZero && duration == .zero {
            report("\(context) must be greater than 0")
            return nil
        }
        return duration
    }

    func size(_ context: String) -> Int? {
        guard let text = scalarText(context) else { return nil }
        guard let bytes = PolicyValueParser.size(text) else {
            report("expected a size like 512KiB or 10MiB for \(context), got '\(text)'")
            return nil
        }
        guard bytes > 0 else {
            report("\(context) must be greater than 0")
            return nil
        }
        return bytes
    }

    /// `50%` → 0.5.
    func percentage(_ context: String) -> Double? {
        guard let text = scalarText(context) else { return nil }
        guard let fraction = PolicyValueParser.percentage(text) else {
            report("expected a percentage from 0% to 100% like 50% for \(context), got '\(text)'")
            return nil
        }
        return fraction
    }

    func oneOf<E: RawRepresentable & CaseIterable>(_ type: E.Type, _ context: String) -> E? where E.RawValue == String {
        guard let text = scalarText(context) else { return nil }
        guard let value = E(rawValue: text) else {
            let choices = E.allCases.map(\.rawValue).joined(separator: ", ")
            report("\(context) must be one of \(choices), got '\(text)'")
            return nil
        }
        return value
    }

    /// A list of strings, each checked by `element`.
    func stringList(_ context: String) -> [(String, YAMLValue)]? {
        guard let items = sequence(context) else { return nil }
        return items.compactMap { item in item.string("an entry of \(context)").map { ($0, item) } }
    }

    private func scalarText(_ context: String) -> String? {
        guard case .scalar(let scalar) = node, !isNull else {
            report("expected a value for \(context), got \(isNull ? "null" : shown)")
            return nil
        }
        return scalar.string
    }
}

/// Reads a YAML mapping key by key and reports, at `finish()`, every key nobody asked for —
/// so a typo never silently disables a setting.
final class MappingReader {
    let value: YAMLValue
    let context: String
    private let entries: [(key: String, keyValue: YAMLValue, value: YAMLValue)]
    private var known: Set<String> = []

    fileprivate init(value: YAMLValue, mapping: Node.Mapping, context: String) {
        self.value = value
        self.context = context
        self.entries = mapping.map { pair in
            (pair.key.string ?? "", value.child(pair.key), value.child(pair.value))
        }
    }

    /// The value of `key`, or nil when it is absent or null.
    func optional(_ key: String) -> YAMLValue? {
        known.insert(key)
        guard let entry = entries.first(where: { $0.key == key }), !entry.value.isNull else { return nil }
        return entry.value
    }

    /// The value of `key`; reports a problem when it is absent or null.
    func required(_ key: String) -> YAMLValue? {
        known.insert(key)
        guard let entry = entries.first(where: { $0.key == key }) else {
            value.report("missing required key '\(key)' in \(context)")
            return nil
        }
        guard !entry.value.isNull else {
            entry.value.report("'\(key)' in \(context) must not be null")
            return nil
        }
        return entry.value
    }

    /// Whether `key` is present (even with a null value).
    func contains(_ key: String) -> Bool {
        known.insert(key)
        return entries.contains { $0.key == key }
    }

    /// All entries, for mappings whose keys are names (upstreams, plans, versions).
    var namedEntries: [(name: String, key: YAMLValue, value: YAMLValue)] {
        entries.map { ($0.key, $0.keyValue, $0.value) }
    }

    /// Reports keys that no accessor asked for, suggesting the closest known one.
    func finish() {
        for entry in entries where !known.contains(entry.key) {
            var message = "unknown key '\(entry.key)' in \(context)"
            if let suggestion = closest(to: entry.key, in: known) {
                message += " (did you mean '\(suggestion)'?)"
            }
            entry.keyValue.report(message)
        }
    }
}

private func closest(to word: String, in candidates: Set<String>) -> String? {
    let scored = candidates.map { ($0, editDistance(word, $0)) }.filter { $0.1 <= max(2, word.count / 3) }
    return scored.min { ($0.1, $0.0) < ($1.1, $1.0) }?.0
}

private func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a.utf8), b = Array(b.utf8)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = Array(repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            current[j] = Swift.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
