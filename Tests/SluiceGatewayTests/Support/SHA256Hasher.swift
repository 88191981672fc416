import Crypto
import NIOCore

struct SHA256Hasher {
    private var hasher = SHA256()

    mutating func update(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
    }

    var hex: String { hasher.finalize().map { String(format: "%02x", $0) }.joined() }
}
