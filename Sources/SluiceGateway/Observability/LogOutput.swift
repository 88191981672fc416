import Foundation

/// Where log lines go: a file descriptor that a thread of its own writes. Callers — event loops
/// handing over a full access-log buffer, the log handler with an event line — only queue the
/// bytes, so no request and no task ever waits for a log write, even when the output blocks (a
/// pipe nobody reads, a stalled log collector). At most `pendingLimit` bytes wait; lines beyond
/// that are dropped and counted (`droppedLines`), and once the output takes lines again a
/// warning line says how many went missing.
public final class LogOutput: Sendable {
    /// How many bytes may wait to be written (queued or being written) before lines are dropped.
    public static let pendingLimit = 8 << 20

    private let writer: LogWriter

    /// Standard output.
    public static let standardOutput = LogOutput(fileDescriptor: STDOUT_FILENO, owned: false)

    /// Writes to `fileDescriptor` (closed when this output goes away if `owned`).
    init(fileDescriptor: Int32, owned: Bool, pendingLimit: Int = LogOutput.pendingLimit) {
        writer = LogWriter(fileDescriptor: fileDescriptor, ownsFileDescriptor: owned, pendingLimit: pendingLimit)
        let thread = Thread { [writer] in writer.run() }
        thread.name = "sluice-log"
        thread.start()
    }

    /// Appends to the file at `path` (created if missing); the file stays open as long as this output lives.
    public convenience init(appendingTo path: String) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        self.init(fileDescriptor: descriptor, owned: true)
    }

    deinit {
        writer.finish()
    }

    /// Queues one line (a newline is added).
    func append(_ line: String) {
        var bytes = Array(line.utf8)
        bytes.append(UInt8(ascii: "\n"))
        writer.enqueue(bytes)
    }

    /// Queues `lines` (whole lines, each ending in a newline).
    func write(_ lines: String) {
        writer.enqueue(Array(lines.utf8))
    }

    /// Waits until every line queued before the call is written, for at most `timeout`
    /// (an output that stays blocked must not hold up a shutdown forever); false when the time
    /// ran out.
    @discardableResult
    public func flush(timeout: Duration = .seconds(5)) -> Bool {
        writer.waitUntilWritten(timeout: timeout)
    }

    /// Lines dropped so far because the output did not keep up.
    public var droppedLines: Int { writer.droppedLines }
}

/// The queue between the callers and the writer thread, and the thread's loop.
private final class LogWriter: @unchecked Sendable {
    private let fileDescriptor: Int32
    private let ownsFileDescriptor: Bool
    private let pendingLimit: Int
    private let condition = NSCondition()
    // Guarded by `condition`:
    private var pending: [[UInt8]] = []
    private var pendingBytes = 0
    /// The bytes the writer took and has not written yet (they count against the limit too).
    private var writingBytes = 0
    /// Chunks queued and chunks written (or given up on) so far: `flush` waits for the second to
    /// reach the first.
    private var queued = 0
    private var written = 0
    private var dropped = 0
    private var droppedSinceNotice = 0
    private var finishing = false
    private var finished = false
    private var flushRequested = false

    /// Queued bytes that wake the writer at once; less waits at most `lingerSeconds`.
    private static let wakeBytes = 32 << 10
    private static let lingerSeconds = 0.1

    init(fileDescriptor: Int32, ownsFileDescriptor: Bool, pendingLimit: Int) {
        self.fileDescriptor = fileDescriptor
        self.ownsFileDescriptor = ownsFileDescriptor
        self.pendingLimit = pendingLimit
    }

    var droppedLines: Int {
        condition.lock()
        defer { condition.unlock() }
        return dropped
    }

    func enqueue(_ chunk: [UInt8]) {
        guard !chunk.isEmpty else { return }
        condition.lock()
        defer { condition.unlock() }
        guard !finishing else { return }
        guard pendingBytes + writingBytes + chunk.count <= pendingLimit else {
            let lines = chunk.reduce(0) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
            dropped += lines
            droppedSinceNotice += lines
            return
        }
        // The writer is woken for the first chunk (it then writes within `lingerSeconds`) and
        // when enough waits; small event lines in between cost no wake-up each.
        let wake = pending.isEmpty || pendingBytes < Self.wakeBytes && pendingBytes + chunk.count >= Self.wakeBytes
        pending.append(chunk)
        pendingBytes += chunk.count
        queued += 1
        if wake { condition.broadcast() }
    }

    func waitUntilWritten(timeout: Duration) -> Bool {
        let deadline = Date(timeIntervalSinceNow: Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18)
        condition.lock()
        defer { condition.unlock() }
        let target = queued
        flushRequested = true
        condition.broadcast()
        while written < target, !finished {
            guard condition.wait(until: deadline) else { return written >= target }
        }
        return written >= target
    }

    /// Ends the writer once what is queued is written (waiting for it a few seconds at most).
    func finish() {
        condition.lock()
        finishing = true
        condition.broadcast()
        condition.unlock()
        _ = waitUntilWritten(timeout: .seconds(5))
    }

    /// The writer thread: takes everything queued, writes it out in one go, and again.
    func run() {
        while true {
            condition.lock()
            while !finishing, !flushRequested, droppedSinceNotice == 0, pendingBytes < Self.wakeBytes {
                if pending.isEmpty {
                    condition.wait()
                } else if !condition.wait(until: Date(timeIntervalSinceNow: Self.lingerSeconds)) {
                    break
                }
            }
            flushRequested = false
            let batch = pending
            let notice = droppedSinceNotice
            pending = []
            writingBytes = pendingBytes
            pendingBytes = 0
            droppedSinceNotice = 0
            let done = finishing && batch.isEmpty && notice == 0
            if done { finished = true }
            condition.unlock()
            if done { break }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(batch.reduce(0) { $0 + $1.count } + 160)
            if notice > 0 { bytes += Self.droppedNotice(notice) }
            for chunk in batch { bytes += chunk }
            write(bytes)
            condition.lock()
            written += batch.count
            writingBytes = 0
            condition.broadcast()
            condition.unlock()
        }
        if ownsFileDescriptor { close(fileDescriptor) }
    }

    /// A line in `JSONLogHandler`'s format saying how many lines were dropped before it.
    private static func droppedNotice(_ lines: Int) -> [UInt8] {
        var line = "{\"timestamp\":\""
        Timestamp.append(to: &line)
        line += "\",\"level\":\"warning\",\"message\":\"log lines dropped: the log output did not keep up\",\"lines\":\(lines)}\n"
        return Array(line.utf8)
    }

    private func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { bytes in
            guard let base = bytes.baseAddress else { return }
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
