/// What the gateway refuses in a request path before it does anything else (SPEC §3 "Path
/// parameters"): every segment could become a `{param}` copied into an upstream path, and
/// upstreams decode and normalise paths in their own ways (nginx merges `%2F`, Tomcat drops
/// `;…` path parameters, IIS turns `\` into `/`), so a segment that would mean something else to
/// them is refused here rather than forwarded.
public enum PathSafety {
    public enum Problem: Sendable, Equatable {
        /// The target does not start with `/` (absolute and authority forms are not served).
        case notAbsolute
        /// A segment is `.` or `..` once percent-decoded, also with a `;…` suffix (`..;jsessionid`).
        case dotSegment
        /// A segment holds `/`, `\` or NUL once percent-decoded (`%2F`, `%5C`, `%00`), or a raw `\`.
        case hiddenSeparator
        /// A `%` not followed by two hex digits.
        case malformedEscape

        /// Says what was wrong, for the problem's `detail`.
        public var detail: String {
            switch self {
            case .notAbsolute: "The request target must be an absolute path."
            case .dotSegment: "The request path must not have '.' or '..' segments (also percent-encoded or with a ';' suffix)."
            case .hiddenSeparator: "A request path segment must not hold '/', '\\' or NUL, also percent-encoded (%2F, %5C, %00)."
            case .malformedEscape: "The request path has a '%' that is not followed by two hex digits."
            }
        }
    }

    /// The first problem of `path` (the target without its query), or nil when it is safe to route and forward.
    public static func check(_ path: Substring) -> Problem? {
        let bytes = path.utf8
        guard bytes.first == UInt8(ascii: "/") else { return .notAbsolute }
        var segment = SegmentScan()
        var index = bytes.index(after: bytes.startIndex)
        while index != bytes.endIndex {
            var byte = bytes[index]
            if byte == UInt8(ascii: "/") {
                if segment.isDotSegment { return .dotSegment }
                segment = SegmentScan()
                index = bytes.index(after: index)
                continue
            }
            if byte == UInt8(ascii: "%") {
                let first = bytes.index(after: index)
                guard first != bytes.endIndex, let high = hexDigitValue(bytes[first]) else { return .malformedEscape }
                let second = bytes.index(after: first)
                guard second != bytes.endIndex, let low = hexDigitValue(bytes[second]) else { return .malformedEscape }
                byte = high << 4 | low
                index = second
                if byte == UInt8(ascii: "/") { return .hiddenSeparator }
            }
            if byte == UInt8(ascii: "\\") || byte == 0 { return .hiddenSeparator }
            segment.add(byte)
            index = bytes.index(after: index)
        }
        return segment.isDotSegment ? .dotSegment : nil
    }

    /// One segment as it is read, percent-decoded: whether what comes before its first `;` is
    /// one or two dots.
    private struct SegmentScan {
        var dots = 0
        var other = false
        var inParameters = false

        mutating func add(_ byte: UInt8) {
            guard !inParameters else { return }
            switch byte {
            case UInt8(ascii: "."): dots += 1
            case UInt8(ascii: ";"): inParameters = true
            default: other = true
            }
        }

        var isDotSegment: Bool { !other && (dots == 1 || dots == 2) }
    }
}
