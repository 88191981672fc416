/// The one rule set for personal data and secrets in logs: e-mail addresses (`j***@example.com`),
/// phone numbers (all but the last two digits), API keys (`sk_…`), webhook signing secrets
/// (`whsec_…`) and bearer tokens.
public enum SensitiveDataMask {
    /// Returns `text` unchanged (without copying) when there is nothing to mask.
    public static func mask(_ text: String) -> String {
        guard mightContainSensitiveData(text.utf8) else { return text }
        let bytes = Array(text.utf8)
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if let end = emailEnd(bytes, at: index), let at = bytes[index..<end].firstIndex(of: UInt8(ascii: "@")) {
                output.append(bytes[index])
                output.append(contentsOf: stars)
                output.append(contentsOf: bytes[at..<end])
                index = end
            } else if let (prefix, end) = keyEnd(bytes, at: index) {
                output.append(contentsOf: prefix)
                output.append(contentsOf: stars)
                index = end
            } else if let end = bearerEnd(bytes, at: index) {
                output.append(contentsOf: bearerPrefix)
                output.append(contentsOf: stars)
                index = end
            } else if let end = phoneEnd(bytes, at: index) {
                output.append(contentsOf: stars)
                appendLastDigits(bytes[index..<end], count: 2, to: &output)
                index = end
            } else {
                output.append(bytes[index])
                index += 1
            }
        }
        return String(decoding: output, as: UTF8.self)
    }

    private static func mightContainSensitiveData(_ bytes: String.UTF8View) -> Bool {
        var digits = 0
        for byte in bytes {
            if byte == UInt8(ascii: "@") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "B") { return true }
            if isDigit(byte) {
                digits += 1
                if digits >= 7 { return true }
            }
        }
        return false
    }

    /// `local@domain.tld` starting at `start` (which must begin a word).
    private static func emailEnd(_ bytes: [UInt8], at start: Int) -> Int? {
        guard startsWord(bytes, start) else { return nil }
        var index = start
        while index < bytes.count, isEmailLocal(bytes[index]) { index += 1 }
        guard index > start, index < bytes.count, bytes[index] == UInt8(ascii: "@") else { return nil }
        index += 1
        let domainStart = index
        var lastDot: Int?
        while index < bytes.count, isAlphanumeric(bytes[index]) || bytes[index] == UInt8(ascii: "-") || bytes[index] == UInt8(ascii: ".") {
            if bytes[index] == UInt8(ascii: ".") { lastDot = index }
            index += 1
        }
        while index > domainStart, bytes[index - 1] == UInt8(ascii: ".") { index -= 1 }
        guard let lastDot, lastDot > domainStart, lastDot < index - 2 else { return nil }
        return index
    }

    /// `sk_` or `whsec_` followed by at least 8 key characters; returns the prefix and the end.
    private static func keyEnd(_ bytes: [UInt8], at start: Int) -> ([UInt8], Int)? {
        guard startsWord(bytes, start) else { return nil }
        for prefix in secretPrefixes where has(prefix, in: bytes, at: start) {
            var index = start + prefix.count
            while index < bytes.count, isAlphanumeric(bytes[index]) || bytes[index] == UInt8(ascii: "_") || bytes[index] == UInt8(ascii: "-")
                || bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "/") || bytes[index] == UInt8(ascii: "=")
            {
                index += 1
            }
            return index - start - prefix.count >= 8 ? (prefix, index) : nil
        }
        return nil
    }

    private static let secretPrefixes = [Array("sk_".utf8), Array("whsec_".utf8)]
    private static let bearerPrefix = Array("Bearer ".utf8)
    private static let stars = Array("***".utf8)

    /// Whether `prefix` and more follow at `start` (compared in place: this runs at every word start).
    private static func has(_ prefix: [UInt8], in bytes: [UInt8], at start: Int) -> Bool {
        bytes.count > start + prefix.count && bytes[start..<start + prefix.count].elementsEqual(prefix)
    }

    /// Appends the last `count` digits of `run` (its separators left out), in order.
    private static func appendLastDigits(_ run: ArraySlice<UInt8>, count: Int, to output: inout [UInt8]) {
        var start = run.endIndex
        var found = 0
        while start > run.startIndex, found < count {
            start -= 1
            if isDigit(run[start]) { found += 1 }
        }
        for byte in run[start...] where isDigit(byte) { output.append(byte) }
    }

    /// A request path as logs show it: percent-decoded when it decodes to UTF-8 (so an encoded
    /// `%40` or `%2B` cannot hide an address or number from the rules), then masked.
    public static func maskPath(_ path: some StringProtocol) -> String {
        guard path.utf8.contains(UInt8(ascii: "%")) else { return mask(String(path)) }
        return mask(String(path).removingPercentEncodingIfValid ?? String(path))
    }

    /// `Bearer TOKEN`.
    private static func bearerEnd(_ bytes: [UInt8], at start: Int) -> Int? {
        guard startsWord(bytes, start), has(bearerPrefix, in: bytes, at: start) else { return nil }
        var index = start + bearerPrefix.count
        while index < bytes.count, bytes[index] != UInt8(ascii: " "), bytes[index] != UInt8(ascii: "\""), bytes[index] != UInt8(ascii: ",") {
            index += 1
        }
        return index > start + bearerPrefix.count ? index : nil
    }

    /// 7–15 digits written like a phone number: with a leading `+`, or with spaces, dashes,
    /// dots or parentheses between groups, or a national number (leading 0, at least 9 digits).
    /// Plain digit runs such as byte counts and order numbers are left alone.
    private static func phoneEnd(_ bytes: [UInt8], at start: Int) -> Int? {
        guard startsWord(bytes, start), start < bytes.count, isDigit(bytes[start]) || bytes[start] == UInt8(ascii: "+") || bytes[start] == UInt8(ascii: "(")
        else { return nil }
        var index = start
        var digits = 0
        var lastDigitEnd = start
        var separated = false
        var pendingSeparator = false
        while index < bytes.count {
            let byte = bytes[index]
            if isDigit(byte) {
                if pendingSeparator { separated = true }
                pendingSeparator = false
                digits += 1
                lastDigitEnd = index + 1
            } else if byte == UInt8(ascii: " ") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "(")
                || byte == UInt8(ascii: ")")
            {
                pendingSeparator = digits > 0
            } else if !(byte == UInt8(ascii: "+") && index == start) {
                break
            }
            index += 1
        }
        guard (7...15).contains(digits) else { return nil }
        let international = bytes[start] == UInt8(ascii: "+")
        let national = bytes[start] == UInt8(ascii: "0") && digits >= 9
        guard international || separated || national || bytes[start] == UInt8(ascii: "(") else { return nil }
        if lastDigitEnd < bytes.count, isAlphanumeric(bytes[lastDigitEnd]) { return nil }
        if isDate(bytes[start..<lastDigitEnd]) { return nil }
        return lastDigitEnd
    }

    /// `YYYY-MM-DD`, which has phone-like digits but is not personal data.
    private static func isDate(_ candidate: ArraySlice<UInt8>) -> Bool {
        guard candidate.count == 10 else { return false }
        return candidate.enumerated().allSatisfy { offset, byte in offset == 4 || offset == 7 ? byte == UInt8(ascii: "-") : isDigit(byte) }
    }

    private static func startsWord(_ bytes: [UInt8], _ index: Int) -> Bool {
        index == 0 || !(isAlphanumeric(bytes[index - 1]) || bytes[index - 1] == UInt8(ascii: "_"))
    }

    private static func isDigit(_ byte: UInt8) -> Bool { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool { isAlphanumericASCII(byte) }

    private static func isEmailLocal(_ byte: UInt8) -> Bool {
        isAlphanumeric(byte) || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
            || byte == UInt8(ascii: "+") || byte == UInt8(ascii: "%")
    }
}

extension String {
    /// The string with `%XX` escapes decoded; nil when an escape is malformed or the result is not UTF-8.
    fileprivate var removingPercentEncodingIfValid: String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(utf8.count)
        var iterator = utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexDigitValue), let low = iterator.next().flatMap(hexDigitValue) else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }
}
