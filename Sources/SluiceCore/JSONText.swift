/// JSON text written by hand for values stored on a hot path, where `JSONEncoder` (a tree of
/// boxed values, then text) costs several times more. Only what those values need: strings
/// escaped as RFC 8259 requires, and the caller lays out objects and arrays.
enum JSONText {
    /// Appends `value` as a JSON string: `"` and `\` escaped, control characters as `\u00XX`,
    /// everything else (other Unicode included) as is. A string with nothing to escape is
    /// copied in one piece.
    static func appendString(_ value: String, to out: inout String) {
        out.append("\"")
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
                    out.unicodeScalars.append(Unicode.Scalar(hexDigit(code >> 4)))
                    out.unicodeScalars.append(Unicode.Scalar(hexDigit(code & 0xF)))
                default: out.unicodeScalars.append(scalar)
                }
            }
        }
        out.append("\"")
    }

    /// `"name":` and the string.
    static func appendMember(_ name: StaticString, _ value: String, to out: inout String) {
        appendName(name, to: &out)
        appendString(value, to: &out)
    }

    /// `"name":` (the names are the coding keys, which need no escaping).
    static func appendName(_ name: StaticString, to out: inout String) {
        out.append("\"")
        out.append(name.description)
        out.append("\":")
    }

    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10
    }
}
