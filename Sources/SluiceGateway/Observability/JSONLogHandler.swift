import Foundation
public import Logging
import SluiceCore
import Synchronization

/// Writes one JSON object per line: `timestamp`, `level`, `message`, then the metadata
/// (`request_id`, `partner`, `route`, `status`, `duration_ms`, …). E-mail addresses, phone
/// numbers and keys are masked in the message and in metadata values.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    public var logLevel: Logger.Level = .info
    private let output: LogOutput

    /// Values of these keys are identifiers or numbers, never personal data.
    /// Values that never hold partner data: the gateway's own ids and numbers, and upstream
    /// names and addresses from the policies (an IPv4 address looks like a phone number).
    private static let unmaskedKeys: Set<String> = [
        "request_id", "trace_id", "status", "duration_ms", "upstream_ms", "bytes_in", "bytes_out", "upstream", "target", "canary_upstream", "addresses",
    ]

    public init(label: String, output: LogOutput = .standardOutput) {
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged: Logger.Metadata
        if metadata.isEmpty, metadataProvider == nil {
            merged = event.metadata ?? [:]  // the common case: nothing to merge
        } else {
            merged = metadata
            if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
            if let extra = event.metadata { merged.merge(extra) { $1 } }
        }
        if let error = event.error { merged["error"] = "\(error)" }

        var line = "{\"timestamp\":\""
        line += Timestamp.now()
        line += "\",\"level\":\""
        line += event.level.rawValue
        line += "\",\"message\":"
        JSONValue.appendQuoted(SensitiveDataMask.mask(event.message.description), to: &line)
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            line += ","
            JSONValue.appendQuoted(key, to: &line)
            line += ":"
            Self.render(value, masked: !Self.unmaskedKeys.contains(key), into: &line)
        }
        line += "}"
        output.append(line)
    }

    private static func render(_ value: Logger.Metadata.Value, masked: Bool, into line: inout String) {
        switch value {
        case .string(let text):
            JSONValue.appendQuoted(masked ? SensitiveDataMask.mask(text) : text, to: &line)
        case .stringConvertible(let convertible):
            if convertible is any BinaryInteger || convertible is Double || convertible is Bool {
                line += convertible.description
            } else {
                JSONValue.appendQuoted(masked ? SensitiveDataMask.mask(convertible.description) : convertible.description, to: &line)
            }
        case .array(let items):
            line += "["
            for (index, item) in items.enumerated() {
                if index > 0 { line += "," }
                render(item, masked: masked, into: &line)
            }
            line += "]"
        case .dictionary(let dictionary):
            line += "{"
            for (index, key) in dictionary.keys.sorted().enumerated() {
                if index > 0 { line += "," }
                JSONValue.appendQuoted(key, to: &line)
                line += ":"
                render(dictionary[key]!, masked: masked, into: &line)
            }
            line += "}"
        }
    }
}

/// RFC 3339 UTC timestamps with milliseconds, without Foundation formatters.
enum Timestamp {
    static func now() -> String {
        var text = ""
        append(to: &text)
        return text
    }

    /// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` (now) to `text` without an intermediate string.
    static func append(to text: inout String) {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        var parts = tm()
        var seconds = time.tv_sec
        gmtime_r(&seconds, &parts)
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 24) { buffer in
            var index = 0
            func put(_ value: Int, _ width: Int) {
                var value = value
                for position in stride(from: index + width - 1, through: index, by: -1) {
                    buffer[position] = UInt8(ascii: "0") + UInt8(value % 10)
                    value /= 10
                }
                index += width
            }
            func put(_ character: Unicode.Scalar) {
                buffer[index] = UInt8(ascii: character)
                index += 1
            }
            put(Int(parts.tm_year) + 1900, 4); put("-"); put(Int(parts.tm_mon) + 1, 2); put("-"); put(Int(parts.tm_mday), 2)
            put("T"); put(Int(parts.tm_hour), 2); put(":"); put(Int(parts.tm_min), 2); put(":"); put(Int(parts.tm_sec), 2)
            put("."); put(time.tv_nsec / 1_000_000, 3); put("Z")
            // Two pieces of at most 15 bytes are small strings: appended without allocating.
            text += String(decoding: UnsafeBufferPointer(rebasing: buffer[..<12]), as: UTF8.self)
            text += String(decoding: UnsafeBufferPointer(rebasing: buffer[12..<index]), as: UTF8.self)
        }
    }
}
