import HummingbirdCore
import NIOCore
import NIOHTTP1
import Synchronization

/// Why a partner's request body could not be read to its end.
enum RequestBodyFailure: Error, Equatable {
    /// More than `max_request_body` bytes.
    case tooLarge(limit: Int)
    /// The connection closed (or the HTTP/2 stream was reset) before the body was complete;
    /// NIO reports that as an error, never as a clean end.
    case truncated
    /// The body's framing was not valid HTTP (e.g. a broken chunk).
    case malformed
    /// Read after the gateway stopped forwarding the body.
    case closed
}

/// The partner's request body as the upstream client reads it.
///
/// - counts bytes and fails once more than `limit` arrived (`max_request_body`, checked while
///   streaming, so an oversized upload is never held in memory);
/// - records why the body ended early (too large, cut off by the client, malformed);
/// - `close()` stops further reads and waits for one in flight, so the connection's inbound
///   stream is never read by two tasks at once after the responder returns.
final class RequestBodyStream: AsyncSequence, Sendable {
    typealias Element = ByteBuffer

    private struct State {
        var bytes = 0
        var finished = false
        var failure: RequestBodyFailure?
        var closed = false
        var readInFlight = false
        var closeWaiter: CheckedContinuation<Void, Never>?
    }

    /// Reads are serialised by `State.readInFlight`, so the iterator is never used concurrently.
    private final class Source: @unchecked Sendable {
        var iterator: RequestBody.AsyncIterator
        init(_ body: RequestBody) { iterator = body.makeAsyncIterator() }
    }

    private let state = Mutex(State())
    private let source: Source
    private let limit: Int

    init(_ body: RequestBody, limit: Int) {
        self.source = Source(body)
        self.limit = limit
    }

    /// Bytes read so far.
    var bytesRead: Int { state.withLock { $0.bytes } }
    /// Whether the whole body was read.
    var isComplete: Bool { state.withLock { $0.finished } }
    /// Why reading failed, if it did.
    var failure: RequestBodyFailure? { state.withLock { $0.failure } }

    struct AsyncIterator: AsyncIteratorProtocol {
        let stream: RequestBodyStream
        mutating func next() async throws -> ByteBuffer? { try await stream.read() }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(stream: self) }

    private func read() async throws -> ByteBuffer? {
        try state.withLock { state in
            if let failure = state.failure { throw failure }
            if state.closed { throw RequestBodyFailure.closed }
            state.readInFlight = true
        }
        if state.withLock({ $0.finished }) {
            endRead(nil, failure: nil)
            return nil
        }
        let chunk: ByteBuffer?
        do {
            chunk = try await source.iterator.next()
        } catch {
            // The connection closing mid-body reaches the parser as an invalid end of input.
            let malformed = (error as? HTTPParserError).map { $0 != .invalidEOFState } ?? false
            let failure: RequestBodyFailure = malformed ? .malformed : .truncated
            endRead(nil, failure: failure)
            throw failure
        }
        if let failure = endRead(chunk, failure: nil) { throw failure }
        return chunk
    }

    @discardableResult
    private func endRead(_ chunk: ByteBuffer?, failure: RequestBodyFailure?) -> RequestBodyFailure? {
        let (waiter, result): (CheckedContinuation<Void, Never>?, RequestBodyFailure?) = state.withLock { state in
            state.readInFlight = false
            if let failure {
                state.failure = failure
            } else if let chunk {
                state.bytes += chunk.readableBytes
                if state.bytes > limit { state.failure = .tooLarge(limit: limit) }
            } else {
                state.finished = true
            }
            let waiter = state.closeWaiter
            state.closeWaiter = nil
            return (waiter, state.failure)
        }
        waiter?.resume()
        return result
    }

    /// Stops reading; returns once no read is in flight.
    func close() async {
        let mustWait = state.withLock { state in
            state.closed = true
            return state.readInFlight
        }
        guard mustWait else { return }
        await withCheckedContinuation { continuation in
            let resumeNow = state.withLock { state in
                if state.readInFlight {
                    state.closeWaiter = continuation
                    return false
                }
                return true
            }
            if resumeNow { continuation.resume() }
        }
    }
}
