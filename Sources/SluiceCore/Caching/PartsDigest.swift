import Crypto
import Foundation

/// SHA-256 over a list of parts, each length-prefixed (an absent one marked apart), so that no
/// two different lists share their bytes: the cache key and the dedupe fingerprint, which a
/// partner's path must never shape into another partner's.
struct PartsDigest {
    private var hasher = SHA256()

    mutating func add(_ part: String?) {
        guard let part else { return withUnsafeBytes(of: UInt64.max) { hasher.update(bufferPointer: $0) } }
        withUnsafeBytes(of: UInt64(part.utf8.count).bigEndian) { hasher.update(bufferPointer: $0) }
        var bytes = part
        bytes.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
    }

    /// A fixed-size last part (a digest), as is.
    mutating func addDigest(of bytes: some DataProtocol) {
        hasher.update(data: Data(SHA256.hash(data: bytes)))
    }

    /// Lower-case hex.
    func hex() -> String {
        SHA256Digest(hasher.finalize()).hex
    }
}
