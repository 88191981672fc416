public import Foundation

/// A task's id: `tsk_` and 24 characters of `[a-z0-9]` (about 124 random bits), so an id cannot
/// be guessed and any other text is known not to be one before a store is asked.
public struct TaskID: Sendable, Hashable, Codable, CustomStringConvertible {
    public let text: String

    /// Parses an id from a path or a command line; nil for anything that is not one.
    public init?(_ text: some StringProtocol) {
        guard text.utf8.count == 28, text.hasPrefix("tsk_"),
            text.utf8.dropFirst(4).allSatisfy({ (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) })
        else { return nil }
        self.text = String(text)
    }

    /// A new random id. Each draw of 64 bits gives up to eight characters: a byte under 252
    /// (7 × 36) picks one of the 36 evenly, a higher one is skipped. (One draw per character
    /// made the system generator's 24 `getrandom` calls a twentieth of a task accept's CPU.)
    public static func random(using generator: inout some RandomNumberGenerator) -> TaskID {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)
        var characters = Array("tsk_".utf8)
        characters.reserveCapacity(28)
        while characters.count < 28 {
            var bits = generator.next()
            for _ in 0..<8 where characters.count < 28 {
                let byte = UInt8(truncatingIfNeeded: bits)
                bits >>= 8
                if byte < 252 { characters.append(alphabet[Int(byte % 36)]) }
            }
        }
        return TaskID(String(decoding: characters, as: UTF8.self))!
    }

    public static func random() -> TaskID {
        var generator = SystemRandomNumberGenerator()
        return random(using: &generator)
    }

    /// A new random id in queue shard `shard` of `count` (drawn until one lands there: `count`
    /// draws on average).
    public static func random(inShard shard: Int, of count: Int) -> TaskID {
        var generator = SystemRandomNumberGenerator()
        while true {
            let id = random(using: &generator)
            if id.shard(of: count) == shard { return id }
        }
    }

    /// The queue shard (0..<`count`) the task lives in: the same for every instance (FNV-1a of
    /// the id, not Swift's per-process seeded hash).
    public func shard(of count: Int) -> Int {
        Self.fnv1a(text.utf8) % count
    }

    /// 32-bit FNV-1a of `bytes`, as a non-negative Int.
    static func fnv1a(_ bytes: some Sequence<UInt8>) -> Int {
        var hash: UInt32 = 2_166_136_261
        for byte in bytes {
            hash ^= UInt32(byte)
            hash = hash &* 16_777_619
        }
        return Int(hash)
    }

    public var description: String { text }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let id = TaskID(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a task id: \(text)"))
        }
        self = id
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(text)
    }
}

/// A header as a task keeps it (order and repeats preserved).
public struct TaskHeader: Sendable, Equatable, Codable {
    public var name: String
    public var value: String

    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// The upstream call a task makes: what the accepting request would have sent upstream
/// (method, the upstream and its path with the query, the forwarded headers, the body).
/// Written once at accept and read by the worker that runs the task.
public struct TaskRequest: Sendable, Equatable, Codable {
    public var method: String
    public var upstream: String
    public var pathAndQuery: String
    public var headers: [TaskHeader]
    public var body: Data
    /// The route's `request_timeout` when the task was accepted (minutes are fine).
    public var timeoutMilliseconds: Int64

    public init(method: String, upstream: String, pathAndQuery: String, headers: [TaskHeader], body: Data, timeoutMilliseconds: Int64 = 30_000) {
        self.method = method
        self.upstream = upstream
        self.pathAndQuery = pathAndQuery
        self.headers = headers
        self.body = body
        self.timeoutMilliseconds = timeoutMilliseconds
    }
}

/// The upstream's final answer to a task.
public struct TaskResult: Sendable, Equatable, Codable {
    public var status: Int
    public var headers: [TaskHeader]
    public var body: Data

    public init(status: Int, headers: [TaskHeader], body: Data) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// A task as the stores keep it: who owns it, where it is, and its result once it has one.
/// Its `revision` is its lifecycle's version: a store replaces a task only when the stored
/// revision is the one the change was made from (compare and set), so two instances never
/// both apply a transition.
public struct TaskRecord: Sendable, Equatable, Codable {
    public var id: TaskID
    public var partner: String
    /// The API version of the accepting request (its status URL is under it).
    public var version: String
    public var route: String
    public var lifecycle: TaskLifecycle
    public var result: TaskResult?
    /// Why a task failed without a result from the upstream (a timeout, a refused connection).
    public var failure: String?
    /// The accepting request's W3C `traceparent`, so task runs and webhooks join its trace.
    public var traceparent: String?
    /// The upstream that runs the task (the route's, or its canary's); nil in records from
    /// before upstream pools.
    public var upstream: String?

    public init(
        id: TaskID, partner: String, version: String, route: String, lifecycle: TaskLifecycle, traceparent: String? = nil, upstream: String? = nil
    ) {
        self.id = id
        self.upstream = upstream
        self.partner = partner
        self.version = version
        self.route = route
        self.lifecycle = lifecycle
        self.traceparent = traceparent
    }

    public var revision: Int { lifecycle.version }

    /// The record without its result (stores keep the result apart, so that reads that do not
    /// need it never move it).
    public var withoutResult: TaskRecord {
        var record = self
        record.result = nil
        return record
    }
}

/// A value the stores keep as JSON text (bodies as base64): tasks, their requests, webhook messages.
public protocol StoredAsJSON: Codable {
    /// The value as the stores keep it.
    func encoded() -> String
}

extension StoredAsJSON {
    /// The value as the stores keep it, by `JSONEncoder`.
    public func encoded() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try! encoder.encode(self), as: UTF8.self)
    }

    /// Decodes `encoded()`; nil for anything else.
    public init?(encoded text: some Collection<UInt8>) {
        guard let value = try? JSONDecoder().decode(Self.self, from: Data(text)) else { return nil }
        self = value
    }
}

// A record is stored on every accept and state change, a request on every accept, a result on
// every finish; `JSONEncoder` took over a quarter of an accept's CPU. They are written by hand
// as the JSON it would write (the same members, `Data` as base64, nil members left out), so
// any gateway version reads them, and the Lua scripts that read a record's route still do.

extension TaskRecord: StoredAsJSON {
    public func encoded() -> String {
        var object = JSONText.Object()
        object.string("id", id.text)
        object.raw("lifecycle", lifecycle.encodedJSON)
        object.string("partner", partner)
        if let result { object.raw("result", result.encoded()) }
        object.string("failure", ifPresent: failure)
        object.string("route", route)
        object.string("traceparent", ifPresent: traceparent)
        object.string("upstream", ifPresent: upstream)
        object.string("version", version)
        return object.close()
    }
}

extension TaskLifecycle {
    /// As `JSONEncoder` writes it: `{"attempts","history":[…],"runner"}`.
    fileprivate var encodedJSON: String {
        var object = JSONText.Object()
        object.number("attempts", attempts)
        object.raw(
            "history",
            JSONText.array(
                history.map { transition in
                    var entry = JSONText.Object()
                    entry.number("at", transition.at)
                    entry.string("instance", transition.instance)
                    entry.string("note", ifPresent: transition.note)
                    entry.string("requestID", transition.requestID)
                    entry.string("status", transition.status.rawValue)
                    entry.number("version", transition.version)
                    return entry.close()
                })
        )
        object.string("runner", ifPresent: runner)
        return object.close()
    }
}

extension TaskRequest: StoredAsJSON {
    public func encoded() -> String {
        var object = JSONText.Object()
        object.bodyAndHeaders(body, headers)
        object.string("method", method)
        object.string("pathAndQuery", pathAndQuery)
        object.number("timeoutMilliseconds", timeoutMilliseconds)
        object.string("upstream", upstream)
        return object.close()
    }
}

extension TaskResult: StoredAsJSON {
    public func encoded() -> String {
        var object = JSONText.Object()
        object.bodyAndHeaders(body, headers)
        object.number("status", status)
        return object.close()
    }
}

extension JSONText.Object {
    /// `"body":"BASE64","headers":[{"name","value"},…]`, as `JSONEncoder` writes them.
    fileprivate mutating func bodyAndHeaders(_ body: Data, _ headers: [TaskHeader]) {
        raw("body", "\"" + body.base64EncodedString() + "\"")
        raw(
            "headers",
            JSONText.array(
                headers.map { header in
                    var object = JSONText.Object()
                    object.string("name", header.name)
                    object.string("value", header.value)
                    return object.close()
                })
        )
    }
}
