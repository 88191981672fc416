public import Foundation
public import NIOCore
public import SluiceCore

/// Where a cached answer lives: its route, whose it is (a partner id, or `*` for a route whose
/// scope is `shared`) and the request's `CacheKey`. Purges go by route and owner.
public struct CacheEntryKey: Sendable, Hashable {
    public let route: String
    public let owner: String
    /// `CacheKey.make(…)`: 64 hex characters.
    public let hash: String

    public static let sharedOwner = "*"

    public init(route: String, owner: String, hash: String) {
        self.route = route
        self.owner = owner
        self.hash = hash
    }
}

/// An upstream answer as the cache keeps it (SPEC §9).
public struct CachedResponse: Sendable, Equatable {
    public var status: Int
    /// The upstream's headers, less hop-by-hop ones (the gateway's own are added when it answers).
    public var headers: [TaskHeader]
    public var body: Data
    /// When the answer arrived (epoch ms).
    public var storedAt: Int64
    /// The upstream's `Age` when it arrived (ms).
    public var initialAge: Int64
    public var freshness: CachePolicy.Freshness
    /// The upstream's `Vary` names (lowercase, sorted) and the storing request's values of them:
    /// the entry answers only requests with the same values.
    public var varyNames: [String]
    public var varyValues: [String?]

    public init(
        status: Int, headers: [TaskHeader], body: Data, storedAt: Int64, initialAge: Int64, freshness: CachePolicy.Freshness,
        varyNames: [String] = [], varyValues: [String?] = []
    ) {
        self.status = status
        self.headers = headers
        self.body = body
        self.storedAt = storedAt
        self.initialAge = initialAge
        self.freshness = freshness
        self.varyNames = varyNames
        self.varyValues = varyValues
    }

    /// An upstream answer that arrived at `now`; its `Age` header is its initial age.
    public static func arriving(
        status: Int, headers: [TaskHeader], body: Data, at now: Int64, freshness: CachePolicy.Freshness, varyNames: [String], varyValues: [String?]
    ) -> CachedResponse {
        let age = headers.first { $0.name.lowercased() == "age" }.flatMap { Int64($0.value) }.map { $0 * 1_000 } ?? 0
        return CachedResponse(
            status: status, headers: headers, body: body, storedAt: now, initialAge: age, freshness: freshness, varyNames: varyNames, varyValues: varyValues
        )
    }

    /// Its age at `now` (ms): the upstream's `Age` when it arrived plus the time since.
    public func age(at now: Int64) -> Int64 {
        CachePolicy.age(storedAt: storedAt, initialAge: initialAge, now: now)
    }

    /// The value of header `name` (lowercase), if the answer has it.
    public func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name }?.value
    }

    /// How long the store keeps it: its freshness left plus the longer stale window and, when it
    /// has a validator (`ETag`, `Last-Modified`), as long again as it was fresh (at least a
    /// minute) to be revalidated with a 304 rather than fetched whole (at least 1 ms).
    public var keepMilliseconds: Int64 {
        let revalidation = header("etag") != nil || header("last-modified") != nil ? max(freshness.lifetime, 60_000) : 0
        return max(1, freshness.lifetime - initialAge + max(freshness.staleWhileRevalidate, freshness.staleIfError, revalidation))
    }
}

extension CachedResponse {
    /// The stored form, read on every hit, so plain to parse: length-prefixed fields
    /// (`LENGTH:BYTES`) — a format tag, the numbers, the headers, the vary values (`-1:` for
    /// none) — then the body as is when it is UTF-8 text (`t`), else base64 (`b`).
    public func encoded() -> String {
        var out = ""
        out.reserveCapacity(96 + body.count + headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 8 })
        // Appended piece by piece: an interpolated field would build a string of its own.
        func field(_ text: String) {
            out += String(text.utf8.count)
            out += ":"
            out += text
        }
        field("C1")
        for number in [Int64(status), storedAt, initialAge, freshness.lifetime, freshness.staleWhileRevalidate, freshness.staleIfError] {
            field(String(number))
        }
        field(String(headers.count))
        for header in headers {
            field(header.name)
            field(header.value)
        }
        field(String(varyNames.count))
        for (name, value) in zip(varyNames, varyValues) {
            field(name)
            if let value { field(value) } else { out += "-1:" }
        }
        if let text = String(validating: body, as: UTF8.self) {
            out += "t"
            out += text
        } else {
            out += "b"
            out += body.base64EncodedString()
        }
        return out
    }

    /// Reads `encoded()`; nil for anything else.
    public init?(encoded bytes: some Collection<UInt8>) {
        var reader = FieldReader(bytes: Array(bytes))
        guard reader.text() == "C1", let status = reader.number(), let storedAt = reader.number(), let initialAge = reader.number(),
            let lifetime = reader.number(), let whileRevalidate = reader.number(), let ifError = reader.number(), let headerCount = reader.number(),
            (0...10_000).contains(headerCount)
        else { return nil }
        var headers: [TaskHeader] = []
        headers.reserveCapacity(Int(headerCount))
        for _ in 0..<headerCount {
            guard let name = reader.text(), let value = reader.text() else { return nil }
            headers.append(TaskHeader(name, value))
        }
        guard let varyCount = reader.number(), (0...1_000).contains(varyCount) else { return nil }
        var names: [String] = []
        var values: [String?] = []
        for _ in 0..<varyCount {
            guard let name = reader.text(), let value = reader.optionalText() else { return nil }
            names.append(name)
            values.append(value)
        }
        guard let body = reader.body() else { return nil }
        self.init(
            status: Int(status), headers: headers, body: body, storedAt: storedAt, initialAge: initialAge,
            freshness: .init(lifetime: lifetime, staleWhileRevalidate: whileRevalidate, staleIfError: ifError), varyNames: names, varyValues: values
        )
    }

    /// Reads `LENGTH:BYTES` fields from the front of a stored entry.
    private struct FieldReader {
        let bytes: [UInt8]
        var index = 0

        /// The next field's bytes; nil at a malformed field. `-1:` reads as an empty range flagged absent.
        private mutating func field() -> (range: Range<Int>, absent: Bool)? {
            var length = 0
            var digits = 0
            var negative = false
            while index < bytes.count, bytes[index] != UInt8(ascii: ":") {
                let byte = bytes[index]
                if byte == UInt8(ascii: "-"), digits == 0, !negative {
                    negative = true
                } else {
                    guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte), digits < 10 else { return nil }
                    length = length * 10 + Int(byte - UInt8(ascii: "0"))
                    digits += 1
                }
                index += 1
            }
            guard index < bytes.count, digits > 0 else { return nil }
            index += 1
            if negative { return length == 1 ? (index..<index, true) : nil }
            guard length <= bytes.count - index else { return nil }
            defer { index += length }
            return (index..<(index + length), false)
        }

        mutating func text() -> String? {
            guard let (range, absent) = field(), !absent else { return nil }
            return String(decoding: bytes[range], as: UTF8.self)
        }

        /// A text field, or nil inside for `-1:`; nil outside for a malformed one.
        mutating func optionalText() -> String?? {
            guard let (range, absent) = field() else { return nil }
            return .some(absent ? nil : String(decoding: bytes[range], as: UTF8.self))
        }

        mutating func number() -> Int64? {
            text().flatMap { Int64($0) }
        }

        /// The rest: `t` then the body as is, or `b` then base64.
        mutating func body() -> Data? {
            guard index < bytes.count else { return nil }
            let rest = bytes[(index + 1)...]
            switch bytes[index] {
            case UInt8(ascii: "t"): return Data(rest)
            case UInt8(ascii: "b"): return Data(base64Encoded: Data(rest))
            default: return nil
            }
        }
    }
}

/// The shared response cache (SPEC §9): entries every instance reads, a short lock per key so
/// that concurrent misses across instances make one upstream call, and purges. The request-path
/// operations take an event loop, are called on it and complete there, exactly once.
public protocol ResponseCacheStore: Sendable {
    /// The entry at `key` (nil when there is none or it expired); when there is none and
    /// `lockFor` is given, the key's fill lock is taken for that long in the same step if nobody
    /// holds it (`locked`: the caller now holds it, and calls the upstream and stores).
    func lookUpResponse(
        _ key: CacheEntryKey, lockFor: Duration?, on eventLoop: any EventLoop, completion: @escaping (Result<CacheLookup, any Error>) -> Void
    )

    /// Stores (or replaces) the entry, kept for `response.keepMilliseconds`; with
    /// `releasingLock`, gives the key's fill lock back in the same step.
    func storeResponse(
        _ response: CachedResponse, at key: CacheEntryKey, releasingLock: Bool, on eventLoop: any EventLoop,
        completion: @escaping (Result<Void, any Error>) -> Void
    )

    /// Takes the key's fill lock for `duration` when nobody holds it: true for the taker, who
    /// then calls the upstream and stores the answer; the others wait for the entry.
    func takeFillLock(_ key: CacheEntryKey, for duration: Duration, on eventLoop: any EventLoop, completion: @escaping (Result<Bool, any Error>) -> Void)

    /// Gives the fill lock back early (the answer was stored, or could not be).
    func releaseFillLock(_ key: CacheEntryKey, on eventLoop: any EventLoop)

    /// Removes the route's entries (only `owner`'s when given); returns how many.
    func purgeCache(route: String, owner: String?) async throws -> Int
}

/// What a lookup found: the entry, or none and whether the caller took the fill lock.
public struct CacheLookup: Sendable, Equatable {
    public let entry: CachedResponse?
    public let locked: Bool

    public init(entry: CachedResponse?, locked: Bool) {
        self.entry = entry
        self.locked = locked
    }
}

extension ResponseCacheStore {
    /// The entry at `key` (no lock taken).
    public func cachedResponse(_ key: CacheEntryKey, on eventLoop: any EventLoop, completion: @escaping (Result<CachedResponse?, any Error>) -> Void) {
        lookUpResponse(key, lockFor: nil, on: eventLoop) { completion($0.map(\.entry)) }
    }

    /// `cachedResponse(…, on:, completion:)` on `eventLoop`, async.
    public func cachedResponse(_ key: CacheEntryKey, on eventLoop: any EventLoop) async throws -> CachedResponse? {
        try await eventLoop.run { cachedResponse(key, on: $0, completion: $1) }
    }

    /// `lookUpResponse(…, on:, completion:)` on `eventLoop`, async.
    public func lookUpResponse(_ key: CacheEntryKey, lockFor: Duration?, on eventLoop: any EventLoop) async throws -> CacheLookup {
        try await eventLoop.run { lookUpResponse(key, lockFor: lockFor, on: $0, completion: $1) }
    }

    /// `storeResponse(…, on:, completion:)` on `eventLoop`, async.
    public func storeResponse(_ response: CachedResponse, at key: CacheEntryKey, releasingLock: Bool = false, on eventLoop: any EventLoop) async throws {
        try await eventLoop.run { storeResponse(response, at: key, releasingLock: releasingLock, on: $0, completion: $1) }
    }

    /// `takeFillLock(…, on:, completion:)` on `eventLoop`, async.
    public func takeFillLock(_ key: CacheEntryKey, for duration: Duration, on eventLoop: any EventLoop) async throws -> Bool {
        try await eventLoop.run { takeFillLock(key, for: duration, on: $0, completion: $1) }
    }
}
