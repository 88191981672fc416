import NIOCore
import NIOHTTP1
import SluiceCore
import Testing
@testable import SluiceGateway

/// The upstream call's lifecycle without sockets: tries, retries, deadlines, the body between
/// tries, and what the breaker and the connection pool hear.
struct UpstreamCallStateMachineTests {
    typealias Machine = UpstreamCallStateMachine

    private let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    private func machine(body: UpstreamRequest.BodyKind = .none, retryable: Bool = true, attempts: Int = 2, on: Set<UpstreamPolicy.RetryCondition>? = nil) -> Machine {
        var retries = UpstreamPolicy.Retries()
        retries.attempts = attempts
        if let on { retries.on = on }
        return Machine(deadline: start + .seconds(10), body: body, retryable: retryable, retries: retries, bodyTimeout: .seconds(1))
    }

    private func retry(at now: NIODeadline? = nil, budget: Bool = true) -> Machine.RetryContext {
        Machine.RetryContext(now: now ?? start, allowance: FixedAllowance(budget: budget))
    }

    /// A budget that always or never grants, and a 100 ms backoff.
    private final class FixedAllowance: RetryAllowance {
        let budget: Bool
        init(budget: Bool) { self.budget = budget }
        func takeRetry() -> Bool { budget }
        func backoff(before number: Int) -> Duration { .milliseconds(100) }
    }

    private func head(_ status: Int, length: Int? = nil) -> HTTPResponseHead {
        var headers = HTTPHeaders()
        if let length { headers.add(name: "Content-Length", value: String(length)) }
        return HTTPResponseHead(version: .http1_1, status: .init(statusCode: status), headers: headers)
    }

    private func end(_ action: Machine.Action) -> Machine.TryEnd? {
        if case .endTry(let end) = action { return end }
        return nil
    }

    /// Walks a call to the point where its request went out.
    private func sent(_ call: inout Machine) {
        _ = call.start()
        _ = call.slotDecided(granted: true)
        _ = call.breakerAnswered(refusedFor: nil, now: start)
        _ = call.connected()
    }

    /// A small answer is read whole, then delivered with its outcome and the connection given back.
    @Test func smallAnswerIsReadWholeAndTheConnectionGoesBack() {
        var call = machine()
        guard case .acquireSlot = call.start() else { Issue.record("no slot asked"); return }
        guard case .askBreaker = call.slotDecided(granted: true) else { Issue.record("no breaker asked"); return }
        guard case .leaseConnection = call.breakerAnswered(refusedFor: nil, now: start) else { Issue.record("no connection"); return }
        guard case .send(.bodyless, let wakeAt) = call.connected() else { Issue.record("not sent"); return }
        #expect(wakeAt == call.deadline)
        guard case .wake = call.headArrived(head(201, length: 2), retry()) else { Issue.record("not reading whole"); return }
        _ = call.bodyArrived(ByteBuffer(string: "ok"), now: start)
        guard let ended = end(call.responseEnded()), case .respondWhole(let answer, let body) = ended.next else { Issue.record("no answer"); return }
        #expect(answer.status == .created && body == ByteBuffer(string: "ok"))
        #expect(ended.outcome == .success && ended.connection == .giveBack)
    }

    /// A 503 on the retry list is retried with backoff on a fresh try (the connection closed, the
    /// breaker told of the failure); without budget, or past the attempts, the 503 is the answer.
    @Test func listedStatusIsRetriedWhileAllowed() {
        var call = machine(attempts: 1)
        sent(&call)
        guard let first = end(call.headArrived(head(503), retry())), case .retry(let wait, .status(503)) = first.next else {
            Issue.record("not retried"); return
        }
        #expect(wait == .milliseconds(100) && first.outcome == .failure && first.connection == .close)
        #expect(first.targetFailed == true)
        guard case .acquireSlot = call.backoffElapsed() else { Issue.record("no slot for the second try"); return }
        guard case .askBreaker = call.slotDecided(granted: true) else { Issue.record("no second try"); return }
        _ = call.breakerAnswered(refusedFor: nil, now: start)
        _ = call.connected()
        guard case .respondStreaming(let answer, .failure, true, _) = call.headArrived(head(503), retry()) else {
            Issue.record("the second 503 is not the answer"); return
        }
        #expect(answer.status == .serviceUnavailable)

        var withoutBudget = machine()
        sent(&withoutBudget)
        guard case .respondStreaming = withoutBudget.headArrived(head(503), retry(budget: false)) else { Issue.record("retried without budget"); return }
    }

    /// A connect error is retried only for a request that may be sent twice; a non-idempotent
    /// one fails at once (502), a timed-out connect as 504.
    @Test(arguments: [(true, false), (false, false), (false, true)])
    func connectErrors(_ example: (retryable: Bool, timedOut: Bool)) {
        var call = machine(retryable: example.retryable)
        _ = call.start()
        _ = call.slotDecided(granted: true)
        _ = call.breakerAnswered(refusedFor: nil, now: start)
        let ended = end(call.connectFailed(timedOut: example.timedOut, anotherTarget: false, retry()))
        switch (example.retryable, ended?.next) {
        case (true, .retry(_, .connectError)?): break
        case (false, .fail(let failure)?): #expect(failure == (example.timedOut ? .timeout : .unreachable))
        default: Issue.record("unexpected \(String(describing: ended?.next))")
        }
        #expect(ended?.outcome == .failure)
    }

    /// Chunks of a streamed body that come before a connection are sent with the request; once
    /// some of it went out, a failure is not retried (the body cannot be sent again).
    @Test func streamedBodyWaitsForTheTryAndIsNotRetriedOnceSent() {
        var call = machine(body: .streamed)
        _ = call.start()
        guard case .none = call.sendBody(ByteBuffer(string: "early"), promise: nil) else { Issue.record("written without a connection"); return }
        _ = call.slotDecided(granted: true)
        _ = call.breakerAnswered(refusedFor: nil, now: start)
        guard case .send(.streamed(let chunks, end: false), _) = call.connected() else { Issue.record("not streamed"); return }
        #expect(chunks.map(\.0) == [ByteBuffer(string: "early")])
        guard case .writeChunk = call.sendBody(ByteBuffer(string: "more"), promise: nil) else { Issue.record("not written"); return }
        guard case .writeEnd = call.endBody() else { Issue.record("no end"); return }
        guard case .respondStreaming(_, .failure, true, _) = call.headArrived(head(503), retry()) else {
            Issue.record("a 503 after the body went out must not be retried"); return
        }
    }

    /// A connection that could not be made sent nothing: the call goes once to another target,
    /// whatever its method and retry settings, without counting as a retry; a second connect
    /// error is then decided by `retries` as usual.
    @Test func connectErrorFailsOverOnceToAnotherTarget() {
        var call = machine(retryable: false, attempts: 0)
        _ = call.start()
        _ = call.slotDecided(granted: true)
        _ = call.breakerAnswered(refusedFor: nil, now: start)
        guard let first = end(call.connectFailed(timedOut: false, anotherTarget: true, retry())), case .retry(let wait, .connectError) = first.next else {
            Issue.record("no failover"); return
        }
        #expect(wait == .zero && first.outcome == .failure && first.targetFailed == true && call.retriesSoFar == 0)
        guard case .acquireSlot = call.backoffElapsed() else { Issue.record("no slot for the failover"); return }
        _ = call.slotDecided(granted: true)
        _ = call.breakerAnswered(refusedFor: nil, now: start)
        guard let second = end(call.connectFailed(timedOut: false, anotherTarget: true, retry())), case .fail(.unreachable) = second.next else {
            Issue.record("failed over twice"); return
        }
    }

    /// Only connect errors, timeouts, broken connections and 502/503/504 count against a target;
    /// 4xx and other 5xx answers do not (the breaker still hears 5xx as failures).
    @Test func targetVerdicts() {
        for (status, failed) in [(404, false), (429, false), (500, false), (502, true), (503, true), (504, true), (200, false)] {
            var call = machine(attempts: 0)
            sent(&call)
            _ = call.headArrived(head(status, length: 0), retry())
            #expect(end(call.responseEnded())?.targetFailed == failed, "\(status)")
        }
        var cancelled = machine()
        sent(&cancelled)
        #expect(end(cancelled.cancel())?.targetFailed == nil)
    }

    /// A pooled connection the upstream closed just before it was used is replaced, not retried.
    @Test func stalePooledConnectionIsReplaced() {
        var call = machine(attempts: 0)
        sent(&call)
        guard let stale = end(call.connectionClosed(wasPooled: true, anotherTarget: true)), case .reconnect = stale.next else { Issue.record("not replaced"); return }
        #expect(stale.outcome == nil)
        guard case .send = call.connected() else { Issue.record("not sent again"); return }
        guard let broke = end(call.connectionClosed(wasPooled: false, anotherTarget: false)), case .fail(.unreachable) = broke.next else {
            Issue.record("a fresh connection's close is a failure")
            return
        }
    }

    /// A connection that breaks before the answer under a request that may go twice: one try
    /// on another target (a target failure), then a 502; never for a request that may not.
    @Test func aBrokenConnectionTriesAnotherTargetOnce() {
        var call = machine(attempts: 0)
        sent(&call)
        guard let first = end(call.connectionClosed(wasPooled: false, anotherTarget: true)), case .retry(let wait, .connectionBroke) = first.next else {
            Issue.record("no try elsewhere")
            return
        }
        #expect(wait == .zero && first.targetFailed == true && first.outcome == .failure && call.retriesSoFar == 0)
        guard case .acquireSlot = call.backoffElapsed() else { Issue.record("no slot for the try elsewhere"); return }
        _ = call.slotDecided(granted: true)
        _ = call.breakerAnswered(refusedFor: nil, now: start)
        _ = call.connected()
        guard let second = end(call.connectionClosed(wasPooled: false, anotherTarget: true)), case .fail(.unreachable) = second.next else {
            Issue.record("a second try elsewhere")
            return
        }
        var once = machine(retryable: false, attempts: 0)
        sent(&once)
        guard let post = end(once.connectionClosed(wasPooled: false, anotherTarget: true)), case .fail(.unreachable) = post.next else {
            Issue.record("a POST went twice")
            return
        }
    }

    /// No head by the deadline is a 504; a streamed body that stops for `body_timeout` is cut off.
    @Test func deadlinesAndStalls() {
        var waiting = machine()
        sent(&waiting)
        guard case .wake(let at) = waiting.timerFired(now: start + .seconds(5)) else { Issue.record("woke too early"); return }
        #expect(at == waiting.deadline)
        guard let late = end(waiting.timerFired(now: start + .seconds(10))), case .fail(.timeout) = late.next else { Issue.record("no 504"); return }
        #expect(late.connection == .close)

        var streaming = machine()
        sent(&streaming)
        guard case .respondStreaming(_, .success, false, let wakeAt) = streaming.headArrived(head(200, length: 1 << 20), retry(at: start)) else {
            Issue.record("not streaming"); return
        }
        #expect(wakeAt == start + .seconds(1))
        guard case .deliver = streaming.bodyArrived(ByteBuffer(string: "x"), now: start + .milliseconds(800)) else { Issue.record("not delivered"); return }
        guard case .wake = streaming.timerFired(now: start + .seconds(1)) else { Issue.record("cut while it moves"); return }
        guard let stalled = end(streaming.timerFired(now: start + .milliseconds(1_900))), case .breakOff(.stalled) = stalled.next else {
            Issue.record("not cut off"); return
        }
    }

    /// A cancel ends the call without a verdict for the breaker and closes a connection in use;
    /// chunks that wait for a try are handed back to fail.
    @Test func cancelGivesNoVerdict() {
        var call = machine(body: .streamed)
        _ = call.start()
        _ = call.sendBody(ByteBuffer(string: "waiting"), promise: nil)
        guard let cancelled = end(call.cancel()), case .cancelled = cancelled.next else { Issue.record("not cancelled"); return }
        #expect(cancelled.outcome == .cancelled && cancelled.connection == .keep)
        #expect(call.takePendingChunks().count == 1)
        guard case .refuseChunk = call.sendBody(ByteBuffer(string: "late"), promise: nil) else { Issue.record("a chunk after the end"); return }
        guard case .none = call.cancel() else { Issue.record("cancelled twice"); return }
    }

    /// An open breaker or a full bulkhead is 503 with the breaker's wait.
    @Test func refusedByBreakerOrBulkhead() {
        var full = machine()
        _ = full.start()
        guard let refused = end(full.slotDecided(granted: false)), case .fail(.unavailable(retryAfter: 1)) = refused.next else { Issue.record("no 503"); return }
        var open = machine()
        _ = open.start()
        _ = open.slotDecided(granted: true)
        guard let broken = end(open.breakerAnswered(refusedFor: .milliseconds(2_500), now: start)), case .fail(.unavailable(retryAfter: 3)) = broken.next else {
            Issue.record("no 503 with the breaker's wait"); return
        }
    }
}
