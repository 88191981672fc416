/// JSON text written by hand for documents on hot paths, where `JSONEncoder` (a tree of boxed
/// values, then text) and `JSONSerialization` (bridged dictionaries, keys sorted by a locale
/// compare) cost several times more. Only what those documents need: strings escaped as RFC
/// 8259 requires, objects written member by member, arrays of values already written.
enum JSONText {
    /// `value` as a JSON string: `"` and `\` escaped, control characters as `\u00XX`, everything
    /// else (other Unicode included) as is. A string with nothing to escape is copied whole.
    static func string(_ value: String) -> String {
        var out = "\""
        if value.utf8.allSatisfy({ $0 >= 0x20 && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }) {
            out.append(value)
        } else {
            for scalar in value.unicodeScalars {
                switch scalar {
                case "\"": out.append("\\\"")
                case "\\": out.append("\\\\")
                case "\u{0}"..."\u{1F}":
                    let code = UInt8(scalar.value)
                    out.append("\\u00")
                    out.unicodeScalars.append(Unicode.Scalar(Hex.digit(code >> 4)))
                    out.unicodeScalars.append(Unicode.Scalar(Hex.digit(code & 0xF)))
                default: out.unicodeScalars.append(scalar)
                }
            }
        }
        out.append("\"")
        return out
    }

    /// `[a,b,…]` of values already written as JSON.
    static func array(_ values: some Sequence<String>) -> String {
        "[" + values.joined(separator: ",") + "]"
    }

    /// An object written member by member, in the order the caller gives (the documents give
    /// their members in key order); `close()` gives its text.
    struct Object {
        private var text = "{"

        init() {}

        mutating func string(_ name: StaticString, _ value: String) {
            raw(name, JSONText.string(value))
        }

        mutating func string(_ name: StaticString, ifPresent value: String?) {
            if let value { string(name, value) }
        }

        mutating func number(_ name: StaticString, _ value: some BinaryInteger) {
            raw(name, String(value))
        }

        /// A member whose value is JSON text already (an object, an array, `null`).
        mutating func raw(_ name: StaticString, _ json: String) {
            if text.utf8.count > 1 { text.append(",") }
            text.append("\"")
            text.append(name.description)  // coding keys: nothing to escape
            text.append("\":")
            text.append(json)
        }

        func close() -> String { text + "}" }
    }
}
