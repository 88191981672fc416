/// The problem types the gateway answers with (`urn:sluice:problem:NAME`, SPEC §3).
public enum ProblemType: String, Sendable, CaseIterable {
    case unauthorized
    case forbiddenVersion = "forbidden-version"
    case unknownVersion = "unknown-version"
    case notFound = "not-found"
    case methodNotAllowed = "method-not-allowed"
    case rateLimited = "rate-limited"
    case quotaExceeded = "quota-exceeded"
    case concurrencyLimited = "concurrency-limited"
    case idempotencyKeyInUse = "idempotency-key-in-use"
    case idempotencyKeyReused = "idempotency-key-reused"
    case invalidIdempotencyKey = "invalid-idempotency-key"
    case missingIdempotencyKey = "missing-idempotency-key"
    /// Sluice extension: the key's request finished, but its response body was too large to keep.
    case idempotentResponseNotReplayable = "idempotent-response-not-replayable"
    case payloadTooLarge = "payload-too-large"
    /// Sluice extension: only a queued task can be cancelled (409).
    case taskNotCancellable = "task-not-cancellable"
    case upstreamTimeout = "upstream-timeout"
    case upstreamUnavailable = "upstream-unavailable"
    case badGateway = "bad-gateway"
    case invalidRequest = "invalid-request"
    /// Admin API: the token's role may not do this.
    case forbidden
    /// Anything unexpected: details are logged, never sent.
    case internalError = "internal-error"

    public var uri: String { "urn:sluice:problem:\(rawValue)" }

    public var defaultStatus: Int {
        switch self {
        case .unauthorized: 401
        case .forbiddenVersion, .forbidden: 403
        case .unknownVersion, .notFound: 404
        case .methodNotAllowed: 405
        case .rateLimited, .quotaExceeded, .concurrencyLimited: 429
        case .idempotencyKeyInUse, .idempotentResponseNotReplayable, .taskNotCancellable: 409
        case .idempotencyKeyReused: 422
        case .invalidIdempotencyKey, .missingIdempotencyKey, .invalidRequest: 400
        case .payloadTooLarge: 413
        case .upstreamTimeout: 504
        case .upstreamUnavailable: 503
        case .badGateway: 502
        case .internalError: 500
        }
    }

    public var title: String {
        switch self {
        case .unauthorized: "Unauthorized"
        case .forbiddenVersion: "API version not allowed"
        case .unknownVersion: "Unknown API version"
        case .notFound: "Not found"
        case .methodNotAllowed: "Method not allowed"
        case .rateLimited: "Rate limit exceeded"
        case .quotaExceeded: "Quota exceeded"
        case .concurrencyLimited: "Too many concurrent requests"
        case .idempotencyKeyInUse: "Idempotency key in use"
        case .idempotencyKeyReused: "Idempotency key reused"
        case .invalidIdempotencyKey: "Invalid idempotency key"
        case .missingIdempotencyKey: "Missing idempotency key"
        case .idempotentResponseNotReplayable: "Response not replayable"
        case .payloadTooLarge: "Payload too large"
        case .taskNotCancellable: "Task not cancellable"
        case .upstreamTimeout: "Upstream timed out"
        case .upstreamUnavailable: "Upstream unavailable"
        case .badGateway: "Bad gateway"
        case .invalidRequest: "Invalid request"
        case .forbidden: "Forbidden"
        case .internalError: "Internal error"
        }
    }
}

/// An RFC 9457 problem document (`application/problem+json`).
public struct Problem: Sendable, Equatable {
    public var type: ProblemType
    public var status: Int
    public var title: String
    public var detail: String
    /// Extension members, e.g. `violated-policies`.
    public var extensions: [(name: String, value: JSONValue)]

    public init(_ type: ProblemType, detail: String, status: Int? = nil, title: String? = nil, extensions: [(String, JSONValue)] = []) {
        self.type = type
        self.status = status ?? type.defaultStatus
        self.title = title ?? type.title
        self.detail = detail
        self.extensions = extensions.map { (name: $0.0, value: $0.1) }
    }

    public static let contentType = "application/problem+json"

    /// The JSON body; `instance` is the request path (omitted when the request could not be
    /// parsed), `request_id` ties it to the logs.
    public func json(instance: String?, requestID: String) -> String {
        var members: [(String, JSONValue)] = [
            ("type", .string(type.uri)),
            ("title", .string(title)),
            ("status", .int(status)),
            ("detail", .string(detail)),
        ]
        if let instance { members.append(("instance", .string(instance))) }
        members.append(("request_id", .string(requestID)))
        members.append(contentsOf: extensions.map { ($0.name, $0.value) })
        return JSONValue.object(members).rendered
    }

    public static func == (lhs: Problem, rhs: Problem) -> Bool {
        lhs.type == rhs.type && lhs.status == rhs.status && lhs.title == rhs.title && lhs.detail == rhs.detail
            && lhs.extensions.map(\.name) == rhs.extensions.map(\.name) && lhs.extensions.map(\.value) == rhs.extensions.map(\.value)
    }
}

/// A small JSON value with an ordered object, rendered without Foundation.
public indirect enum JSONValue: Sendable, Equatable {
    case string(String)
    case int(Int)
    case bool(Bool)
    case null
    case array([JSONValue])
    case object([(String, JSONValue)])

    public var rendered: String {
        var out = ""
        render(into: &out)
        return out
    }

    public func render(into out: inout String) {
        switch self {
        case .string(let text): JSONValue.appendQuoted(text, to: &out)
        case .int(let number): out += String(number)
        case .bool(let flag): out += flag ? "true" : "false"
        case .null: out += "null"
        case .array(let items):
            out += "["
            for (index, item) in items.enumerated() {
                if index > 0 { out += "," }
                item.render(into: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (index, member) in members.enumerated() {
                if index > 0 { out += "," }
                JSONValue.appendQuoted(member.0, to: &out)
                out += ":"
                member.1.render(into: &out)
            }
            out += "}"
        }
    }

    /// Appends `text` as a JSON string literal.
    public static func appendQuoted(_ text: String, to out: inout String) {
        out += "\""
        // Most values need no escaping: append them whole.
        if !text.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") || $0 == 0xE2 }) {
            out += text
            out += "\""
            return
        }
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x2028 || scalar.value == 0x2029:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.string(let a), .string(let b)): a == b
        case (.int(let a), .int(let b)): a == b
        case (.bool(let a), .bool(let b)): a == b
        case (.null, .null): true
        case (.array(let a), .array(let b)): a == b
        case (.object(let a), .object(let b)): a.map(\.0) == b.map(\.0) && a.map(\.1) == b.map(\.1)
        default: false
        }
    }
}
