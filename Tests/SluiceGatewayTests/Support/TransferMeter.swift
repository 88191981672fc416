import NIOCore
import Synchronization

/// Counts what a throttled writer handed to the kernel, and whether it is held back: blocked on
/// an unwritable connection without progress for half a second (not merely between two writes).
final class TransferMeter: Sendable {
    private let sentBytes = Atomic<Int>(0)
    private let remaining = Atomic<Int>(0)
    private let blocked = Atomic<Bool>(false)
    private let lastProgress = Atomic<Int64>(TransferMeter.now)

    var sent: Int { sentBytes.load(ordering: .relaxed) }
    var isStalled: Bool { isStalled(for: .milliseconds(500)) }

    /// Blocked on an unwritable connection without progress for at least `duration`.
    func isStalled(for duration: Duration) -> Bool {
        blocked.load(ordering: .relaxed) && .nanoseconds(Self.now - lastProgress.load(ordering: .relaxed)) >= duration
    }

    /// Writes `bytes` bytes on `context`'s channel, in 64 KiB chunks and only while it is writable.
    func start(_ bytes: Int, _ context: ChannelHandlerContext) {
        remaining.store(bytes, ordering: .relaxed)
        writeWhileWritable(context)
    }

    /// Writes on; call when the channel becomes writable again.
    func writeWhileWritable(_ context: ChannelHandlerContext) {
        let chunk = context.channel.allocator.buffer(repeating: 0x61, count: 64 << 10)
        while context.channel.isWritable {
            let left = remaining.load(ordering: .relaxed)
            guard left > 0 else { break }
            let size = min(left, chunk.readableBytes)
            remaining.subtract(size, ordering: .relaxed)
            context.writeAndFlush(NIOAny(chunk.getSlice(at: 0, length: size)!)).whenSuccess { [self] in
                sentBytes.add(size, ordering: .relaxed)
                lastProgress.store(Self.now, ordering: .relaxed)
            }
        }
        blocked.store(remaining.load(ordering: .relaxed) > 0, ordering: .relaxed)
    }

    private static var now: Int64 {
        let elapsed = ContinuousClock.now - origin
        return elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000
    }

    private static let origin = ContinuousClock.now
}
