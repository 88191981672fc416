/// Compares X.509 subject names written as RFC 4514 strings (`CN=erp,O=ACME Manufacturing`).
public enum DistinguishedName {
    /// A canonical form: attribute types upper-cased, surrounding spaces trimmed, attributes
    /// sorted, so `O=ACME, CN=erp` and `CN=erp,O=ACME` compare equal. Nil for malformed input.
    public static func canonical(_ text: String) -> String? {
        var attributes: [String] = []
        var current = ""
        var escaped = false
        func flush() -> Bool {
            guard let equals = current.firstIndex(of: "=") else { return false }
            let type = current[..<equals].trimmingASCIISpaces().uppercased()
            let value = current[current.index(after: equals)...].trimmingASCIISpaces()
            guard !type.isEmpty, !value.isEmpty else { return false }
            attributes.append("\(type)=\(value)")
            current = ""
            return true
        }
        for character in text {
            if escaped {
                current.append(character)
                escaped = false
            } else if character == "\\" {
                current.append(character)
                escaped = true
            } else if character == "," || character == "+" {
                guard flush() else { return nil }
            } else {
                current.append(character)
            }
        }
        guard !escaped, flush() else { return nil }
        return attributes.sorted().joined(separator: ",")
    }
}
