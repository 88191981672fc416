import NIOCore
import Testing
@testable import SluiceStore

struct RedisProtocolTests {
    /// Commands are encoded as RESP arrays of bulk strings, binary-safe; several go into one buffer.
    @Test func encodesCommandsWithHiredis() {
        var buffer = ByteBuffer()
        RedisCommandEncoder.write(["SET", "{p:acme}:k", "v 1"], into: &buffer)
        RedisCommandEncoder.write(["GET", "\u{0}\r\n", ""], into: &buffer)
        #expect(String(buffer: buffer) == "*3\r\n$3\r\nSET\r\n$10\r\n{p:acme}:k\r\n$3\r\nv 1\r\n*3\r\n$3\r\nGET\r\n$3\r\n\u{0}\r\n\r\n$0\r\n\r\n")
    }

    /// Replies of every type decode, also when they arrive in pieces and several at once.
    @Test func decodesRepliesFedInPieces() throws {
        let decoder = RedisReplyDecoder()
        let wire = Array("+OK\r\n:-42\r\n$5\r\nhel\0o\r\n$-1\r\n*3\r\n:1\r\n*1\r\n$1\r\nx\r\n-ERR wrong\r\n".utf8)
        var replies: [RedisReply] = []
        for byte in wire {
            try [byte].withUnsafeBytes { try decoder.feed($0) }
            while let reply = try decoder.next() { replies.append(reply) }
        }
        #expect(replies == [
            .status("OK"), .integer(-42), .string(Array("hel\0o".utf8)), .null,
            .array([.integer(1), .array([.string([0x78])]), .error("ERR wrong")]),
        ])
        #expect(try decoder.next() == nil)
    }

    /// A byte stream that is not RESP is a protocol error, not a crash or a hang.
    @Test func rejectsGarbage() throws {
        let decoder = RedisReplyDecoder()
        try Array("?nonsense\r\n".utf8).withUnsafeBytes { try decoder.feed($0) }
        #expect(throws: RedisProtocolError.self) { try decoder.next() }
    }

    /// Replies nested deeper than hiredis supports are refused.
    @Test func rejectsOverlyDeepNesting() throws {
        let decoder = RedisReplyDecoder()
        try Array((String(repeating: "*1\r\n", count: 10) + ":1\r\n").utf8).withUnsafeBytes { try decoder.feed($0) }
        #expect(throws: RedisProtocolError.self) { try decoder.next() }
    }
}
