import Foundation
import Logging
import NIOCore
import NIOHTTP1
import SluiceCore

/// One task's upstream call, through the upstream's bulkhead, breaker and retries like a
/// partner's request (`UpstreamCall`), with the response collected whole for the task record.
/// Lives on one event loop; `cancel()` may be called from anywhere.
final class TaskExchange: UpstreamCallDelegate, @unchecked Sendable {
    /// What the call came to.
    enum Outcome: Sendable {
        case response(TaskResult)
        case failed(UpstreamFailure)
        /// The response broke off, or was larger than `maxResultBody`.
        case broken(String)
        case cancelled
    }

    /// The largest result body a task keeps.
    static let maxResultBody = 10 << 20

    private let eventLoop: any EventLoop
    private let promise: EventLoopPromise<Outcome>
    private var call: UpstreamCall?
    private var head: HTTPResponseHead?
    private var body = ByteBuffer()
    private var ended = false

    private init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        promise = eventLoop.makePromise(of: Outcome.self)
    }

    /// Starts the call for `partner`'s `request` on `eventLoop`.
    /// - Parameter traceparent: Replaces the stored request's `traceparent` (the run's span, when tracing).
    static func start(_ request: TaskRequest, partner: String, upstream: UpstreamRuntime, traceparent: String?, on eventLoop: any EventLoop, logger: Logger) -> TaskExchange {
        let exchange = TaskExchange(eventLoop: eventLoop)
        eventLoop.execute {
            var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: request.method), uri: request.pathAndQuery)
            for header in request.headers { head.headers.add(name: header.name, value: header.value) }
            if let traceparent { head.headers.replaceOrAdd(name: "traceparent", value: traceparent) }
            head.headers.add(name: "Content-Length", value: String(request.body.count))
            let retryable = upstream.policy.retries.attempts > 0  // a task's call always carries its Idempotency-Key
            let call = UpstreamCall(
                runtime: upstream, request: UpstreamRequest(
                    head: head, target: request.pathAndQuery, partner: partner, body: .whole(ByteBuffer(bytes: request.body)), retryable: retryable
                ),
                timeout: .milliseconds(request.timeoutMilliseconds), eventLoop: eventLoop, logger: logger, delegate: exchange
            )
            exchange.call = call
            call.start()
        }
        return exchange
    }

    /// The outcome, once the call ended.
    var outcome: Outcome {
        get async { (try? await promise.futureResult.get()) ?? .cancelled }
    }

    /// Drops the call (its worker lost the task's lease, or the instance stops).
    func cancel() {
        eventLoop.execute { [self] in
            call?.cancel()
            end(.cancelled)
        }
    }

    private func end(_ outcome: Outcome) {
        guard !ended else { return }
        ended = true
        call = nil
        promise.succeed(outcome)
    }

    func upstreamCallWantsBody(_ call: UpstreamCall) {}

    func upstreamCall(_ call: UpstreamCall, respondedWith head: HTTPResponseHead, body: UpstreamResponseBody) {
        self.head = head
        switch body {
        case .whole(let buffer):
            if let buffer { self.body = buffer }
            finished()
        case .streaming:
            break
        }
    }

    func upstreamCall(_ call: UpstreamCall, received chunk: ByteBuffer) {
        var chunk = chunk
        guard body.readableBytes + chunk.readableBytes <= Self.maxResultBody else {
            call.cancel()
            return end(.broken("the upstream's response is larger than \(Self.maxResultBody) bytes"))
        }
        body.writeBuffer(&chunk)
    }

    func upstreamCallFinished(_ call: UpstreamCall) {
        finished()
    }

    func upstreamCall(_ call: UpstreamCall, failed failure: UpstreamFailure) {
        end(.failed(failure))
    }

    func upstreamCall(_ call: UpstreamCall, brokeOff reason: UpstreamBreak) {
        end(.broken("the upstream's response broke off (\(reason))"))
    }

    private func finished() {
        guard let head else { return end(.broken("no response head")) }
        var headers: [TaskHeader] = []
        let connection = head.headers["connection"]
        let nominated = connection.isEmpty ? [] : HeaderRewriter.connectionNominated(values: connection)
        for (name, value) in head.headers where HeaderRewriter.keepsResponseHeader(name, nominated: nominated) {
            headers.append(TaskHeader(name, value))
        }
        end(.response(TaskResult(status: Int(head.status.code), headers: headers, body: Data(body.readableBytesView))))
    }
}
