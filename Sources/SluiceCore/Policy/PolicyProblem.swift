/// A position in a policy file, printed as `FILE:LINE:COL`.
public struct SourceLocation: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The file path as the user named it (folder given on the command line + relative name).
    public var file: String
    /// 1-based line.
    public var line: Int
    /// 1-based column.
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }

    public static func < (lhs: SourceLocation, rhs: SourceLocation) -> Bool {
        (lhs.file, lhs.line, lhs.column) < (rhs.file, rhs.line, rhs.column)
    }
}

/// One problem found in the policy files.
public struct PolicyProblem: Sendable, Hashable, CustomStringConvertible {
    public var location: SourceLocation
    public var message: String

    public init(_ location: SourceLocation, _ message: String) {
        self.location = location
        self.message = message
    }

    /// `FILE:LINE:COL: message`, the format `sluice policies check` prints.
    public var description: String { "\(location): \(message)" }
}

/// Every problem found while loading a policy set; thrown when there is at least one.
public struct PolicyErrors: Error, Sendable, CustomStringConvertible {
    /// Problems sorted by file, line and column.
    public var problems: [PolicyProblem]

    public init(_ problems: [PolicyProblem]) {
        self.problems = problems.sorted { ($0.location, $0.message) < ($1.location, $1.message) }
    }

    public var description: String { problems.map(\.description).joined(separator: "\n") }
}
