import CHiredis

/// A decoded Redis reply (RESP2).
public enum RedisReply: Equatable, Sendable {
    case string([UInt8])
    case status(String)
    case error(String)
    case integer(Int64)
    case null
    case array([RedisReply])
}

/// Why a reply could not be decoded.
struct RedisProtocolError: Error, Equatable {
    let message: String
}

/// Encodes a command in the Redis protocol with hiredis' `redisFormatCommandArgv`.
enum RedisCommandEncoder {
    /// The command as RESP bytes (binary-safe arguments).
    static func encode(_ arguments: [[UInt8]]) -> [UInt8] {
        var joined: [UInt8] = []
        joined.reserveCapacity(arguments.reduce(0) { $0 + $1.count })
        for argument in arguments { joined.append(contentsOf: argument) }
        return encode(joined: joined, lengths: arguments.map(\.count))
    }

    static func encode(_ arguments: [String]) -> [UInt8] {
        var joined: [UInt8] = []
        var lengths: [Int] = []
        lengths.reserveCapacity(arguments.count)
        for argument in arguments {
            joined.append(contentsOf: argument.utf8)
            lengths.append(argument.utf8.count)
        }
        return encode(joined: joined, lengths: lengths)
    }

    /// All arguments back to back in `joined`, split by `lengths`: one buffer instead of one per argument.
    private static func encode(joined: [UInt8], lengths: [Int]) -> [UInt8] {
        var target: UnsafeMutablePointer<CChar>?
        let length: Int32 = joined.withUnsafeBufferPointer { bytes in
            let base = UnsafeRawPointer(bytes.baseAddress ?? UnsafePointer(bitPattern: 1)!).assumingMemoryBound(to: CChar.self)
            var argv: [UnsafePointer<CChar>?] = []
            argv.reserveCapacity(lengths.count)
            var offset = 0
            for length in lengths {
                argv.append(base + offset)
                offset += length
            }
            return argv.withUnsafeMutableBufferPointer { argv in
                lengths.withUnsafeBufferPointer { argvlen in
                    redisFormatCommandArgv(&target, Int32(lengths.count), argv.baseAddress, argvlen.baseAddress)
                }
            }
        }
        guard length > 0, let target else { return [] }
        defer { redisFreeCommand(target) }
        return target.withMemoryRebound(to: UInt8.self, capacity: Int(length)) { Array(UnsafeBufferPointer(start: $0, count: Int(length))) }
    }
}

/// Decodes replies with the hiredis reader. Not thread-safe: one per connection, used on its event loop.
final class RedisReplyDecoder {
    private let reader: UnsafeMutablePointer<redisReader>

    init() {
        reader = redisReaderCreate()
    }

    deinit {
        redisReaderFree(reader)
    }

    /// Adds received bytes.
    func feed(_ bytes: UnsafeRawBufferPointer) throws {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        guard redisReaderFeed(reader, base.assumingMemoryBound(to: CChar.self), bytes.count) == REDIS_OK else {
            throw RedisProtocolError(message: readerError())
        }
    }

    /// The next complete reply, or nil when more bytes are needed.
    func next() throws -> RedisReply? {
        var raw: UnsafeMutableRawPointer?
        guard redisReaderGetReply(reader, &raw) == REDIS_OK else {
            throw RedisProtocolError(message: readerError())
        }
        guard let raw else { return nil }
        defer { freeReplyObject(raw) }
        return Self.convert(raw.assumingMemoryBound(to: redisReply.self).pointee)
    }

    private static func convert(_ reply: redisReply) -> RedisReply {
        func text() -> String {
            guard let str = reply.str else { return "" }
            return String(decoding: UnsafeRawBufferPointer(start: str, count: Int(reply.len)), as: UTF8.self)
        }
        switch reply.type {
        case REDIS_REPLY_STRING:
            guard let str = reply.str else { return .string([]) }
            return .string(Array(UnsafeRawBufferPointer(start: str, count: Int(reply.len))))
        case REDIS_REPLY_STATUS:
            return .status(text())
        case REDIS_REPLY_ERROR:
            return .error(text())
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(reply.integer))
        case REDIS_REPLY_ARRAY:
            return .array((0..<Int(reply.elements)).map { convert(reply.element[$0]!.pointee) })
        default:
            return .null
        }
    }

    private func readerError() -> String {
        withUnsafeBytes(of: reader.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}
