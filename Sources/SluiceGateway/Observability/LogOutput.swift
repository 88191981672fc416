import Foundation
import Synchronization

/// Where log lines go: a file descriptor with a buffer that is written out when it fills
/// up and by `LogFlusher` a few times a second, so a request never waits for a log write.
public final class LogOutput: Sendable {
    private let fileDescriptor: Int32
    private let ownsFileDescriptor: Bool
    private let buffer = Mutex<[UInt8]>([])
    /// Serialises writes to the descriptor, so two buffers never interleave.
    private let writing = Mutex(())
    private static let flushThreshold = 32 << 10

    /// Standard output.
    public static let standardOutput = LogOutput(fileDescriptor: STDOUT_FILENO, owned: false)

    private init(fileDescriptor: Int32, owned: Bool) {
        self.fileDescriptor = fileDescriptor
        self.ownsFileDescriptor = owned
    }

    /// Appends to the file at `path` (created if missing); the file stays open as long as this output lives.
    public convenience init(appendingTo path: String) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        self.init(fileDescriptor: descriptor, owned: true)
    }

    deinit {
        flush()
        if ownsFileDescriptor { close(fileDescriptor) }
    }

    func append(_ line: String) {
        let full: [UInt8]? = buffer.withLock { buffer in
            buffer.append(contentsOf: line.utf8)
            buffer.append(UInt8(ascii: "\n"))
            guard buffer.count >= Self.flushThreshold else { return nil }
            defer { buffer.removeAll(keepingCapacity: true) }
            return buffer
        }
        if let full { write(full) }
    }

    /// Writes `lines` (whole lines, each ending in a newline) out now.
    func write(_ lines: String) {
        var lines = lines
        lines.withUTF8 { bytes in write(bytes) }
    }

    /// Writes out whatever is buffered.
    public func flush() {
        let pending: [UInt8] = buffer.withLock { buffer in
            defer { buffer.removeAll(keepingCapacity: true) }
            return buffer
        }
        if !pending.isEmpty { write(pending) }
    }

    private func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { write($0) }
    }

    private func write(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard let base = bytes.baseAddress else { return }
        writing.withLock { _ in
            var offset = 0
            while offset < bytes.count {
                let written = Foundation.write(fileDescriptor, base + offset, bytes.count - offset)
                if written <= 0 {
                    if written < 0 && errno == EINTR { continue }
                    return
                }
                offset += written
            }
        }
    }
}
