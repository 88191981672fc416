import CHiredis
import NIOCore

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
    /// Appends the command as RESP bytes (binary-safe) to `buffer`. The arguments are laid out
    /// back to back in one temporary buffer (on the stack when small) for hiredis.
    static func write(_ arguments: [String], into buffer: inout ByteBuffer) {
        let total = arguments.reduce(0) { $0 + $1.utf8.count }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(1, total)) { joined in
            withUnsafeTemporaryAllocation(of: Int.self, capacity: max(1, arguments.count)) { lengths in
                withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>?.self, capacity: max(1, arguments.count)) { argv in
                    let base = UnsafeRawPointer(joined.baseAddress!).assumingMemoryBound(to: CChar.self)
                    var offset = 0
                    for (index, argument) in arguments.enumerated() {
                        var argument = argument
                        let count = argument.withUTF8 { bytes in
                            UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: joined[offset..<(offset + bytes.count)]))
                                .copyMemory(from: UnsafeRawBufferPointer(bytes))
                            return bytes.count
                        }
                        lengths[index] = count
                        argv[index] = base + offset
                        offset += count
                    }
                    var target: UnsafeMutablePointer<CChar>?
                    let length = redisFormatCommandArgv(&target, Int32(arguments.count), argv.baseAddress, lengths.baseAddress)
                    guard length > 0, let target else { return }
                    defer { redisFreeCommand(target) }
                    buffer.writeBytes(UnsafeRawBufferPointer(start: target, count: Int(length)))
                }
            }
        }
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
