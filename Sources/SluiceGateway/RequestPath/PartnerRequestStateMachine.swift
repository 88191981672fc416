import SluiceCore
import SluiceStore

/// The lifecycle of one partner request as a value (DESIGN "Lifecycles as state machines"):
/// `PartnerRequestHandler` tells it what happened, it answers what to do next, and the handler
/// does it. It knows what the request waits for (`Stage`), what its body is for, whether an
/// answer is out, and what the request holds in the store — a concurrency lease and an
/// idempotency claim — so that every way a request ends (answered, cut off, reset, timed out,
/// the client gone while a store call is out) gives each of them back exactly once, through a
/// `Release`, and a store answer that comes after the end gives back what it brought.
struct PartnerRequestStateMachine {
    /// What the request is waiting for.
    enum Stage: Equatable {
        /// Admission (and the claim riding with it) is in the store.
        case admitting
        /// The idempotency claim is in the store.
        case claiming
        /// A finished request with the key: the body is read and hashed, its digest decides.
        case comparing
        /// The body is read whole: to send with a call that may be retried, or to store as a task.
        case collecting(Purpose)
        /// The task accept is in the store.
        case storingTask
        /// A task status read or cancel is in the store.
        case lookingUpTask
        /// The upstream call runs (or is about to) and has not answered.
        case calling
        /// The answer is going out.
        case responding
        /// Over: answered, cut off or abandoned (the body may still be draining).
        case finished
    }

    enum Purpose: Equatable {
        case call
        case task
    }

    /// What the body's bytes are for, while it arrives.
    enum BodyUse: Equatable {
        /// Kept while the request waits (reads are paused, so this stays small).
        case held
        /// Kept whole (`collecting`).
        case collected
        /// Sent to the upstream as it arrives (reads pause until the call wants it).
        case forwarded
        /// Dropped (a keyed request's body is still hashed: its digest may decide a replay).
        case dropped
    }

    /// What a request holds of its idempotency key.
    enum Claim: Equatable {
        /// No key, or nothing claimed.
        case none
        /// The claim is in the store (with admission or alone).
        case asked
        /// This request holds the key.
        case held
        /// The key follows the task being stored: the accept's settlement records or releases it.
        case onTask
        /// Recorded or released.
        case concluded
    }

    /// How a request ended.
    enum Ending: Equatable {
        /// The answer went out whole.
        case answered
        /// The answer broke off after its head went out (the upstream stalled or closed, the
        /// body went over the limit or broke).
        case cutOff
        /// The client left (closed the connection, reset the stream) before the answer ended.
        case clientGone
    }

    /// What to give back when a request ends, or when a store answer comes after its end.
    struct Release: Equatable {
        /// Set when the request ends now (its record is written once, then).
        var ending: Ending?
        /// The concurrency lease.
        var lease = false
        var claim = ClaimConclusion.none
    }

    enum ClaimConclusion: Equatable {
        case none
        /// The exchange went through whole: the idempotency control keeps the response when it is
        /// final and replayable, else releases the key.
        case record
        case release
    }

    /// An answer from the gateway itself.
    enum Answer {
        case problem(Problem, headers: [(String, String)])
        /// A recorded response (`Idempotent-Replayed`), or the problem of one whose body was not kept.
        case replay(IdempotencyRecord)
        /// A JSON document: a task's 202, status or cancel.
        case document(status: Int, body: [UInt8], headers: [(String, String)])
        /// An answer from the response cache.
        case cached(CachedAnswer)
    }

    /// A cached entry as it answers one request.
    struct CachedAnswer {
        let response: CachedResponse
        /// 304 to the partner's own conditional request.
        let notModified: Bool
        /// Seconds (`Age`).
        let age: Int64
        let cacheStatus: String
    }

    /// What admission decided, as the request needs it.
    enum AdmissionOutcome {
        /// `lease` when a concurrency slot was taken; `claim` the claim made in the same store
        /// step (nil when none was made).
        case admitted(lease: Bool, claim: ClaimAnswer?)
        /// Refused (429) with this problem.
        case refused(Problem)
        /// `on_redis_failure: deny` while the store is unreachable.
        case storeUnavailable
    }

    /// What a claim found, as the request needs it.
    enum ClaimAnswer {
        case failed
        case claimed
        case inProgress(retryAfterMilliseconds: Int64)
        /// A finished request with the key; `sameTarget` when its method, path and query are this
        /// request's (then the body's digest decides between a replay and 422).
        case completed(IdempotencyRecord, sameTarget: Bool)
    }

    /// How an admitted request goes on, as the handler decides from the route and the upstream.
    enum Dispatch: Equatable {
        /// No body.
        case bodyless
        /// Read the (small) body whole first: the call may be retried.
        case collected
        /// Stream the body as it arrives.
        case streamed
        /// Store the request as a task (the body read whole, up to `max_request_body`).
        case task
    }

    /// The body a call starts with.
    enum CallBody: Equatable {
        case none
        /// The collected body, sent with every try.
        case whole
        /// Streamed as it arrives (`sendHeldBody` once the call wants it).
        case streamed
    }

    /// What to do with a chunk of the request body.
    enum ChunkRoute: Equatable {
        /// Keep it until the request knows what the body is for.
        case hold
        case collect
        case forward
        case drop
        /// Over `max_request_body` (`bodyTooLarge()` says what follows).
        case tooLarge
    }

    /// What the handler does next.
    enum Action {
        case none
        /// Ask the store for the idempotency claim.
        case claim
        /// Decide how the request goes on (`dispatch(_:)`).
        case dispatch
        /// Read the task (status or cancel).
        case lookUpTask
        /// Start the upstream call with this body.
        case startCall(CallBody)
        /// Send the held chunks to the call, and end its body when `end`.
        case sendHeldBody(end: Bool)
        /// End the call's streamed body.
        case endCallBody
        /// Store the collected body as a task.
        case storeTask
        /// Compare the body's digest with the record (`compared(_:matches:)` with the result).
        case compare(IdempotencyRecord)
        /// Write this answer whole (cancelling a call that still takes the body), then call `answerWritten()`.
        case answer(Answer)
        /// Give back what is held.
        case release(Release)
        /// Cancel the upstream call if one runs, then give back what is held (the client left).
        case cancelCall(Release)
        /// Cancel a call that still runs, give back what is held and close the connection
        /// (HTTP/2: reset the stream): the partner must not take a cut-off answer for a whole one.
        case releaseAndClose(Release)
    }

    /// What a task's settlement means for its key.
    enum SettlementAction: Equatable {
        case none
        /// Keep the task's 202 as the key's record (a retry replays it).
        case recordAcceptance
        case releaseClaim
    }

    private(set) var stage: Stage = .admitting
    private(set) var bodyUse: BodyUse = .held
    private(set) var bodyEnded: Bool
    /// The call asked for the streamed body.
    private(set) var bodyWanted = false
    private(set) var responseStarted = false
    private(set) var responseEnded = false
    /// Close the HTTP/1.1 connection (HTTP/2: reset the stream) once the answer is out.
    private(set) var closeAfterResponse: Bool
    private(set) var leaseHeld = false
    private(set) var claim: Claim = .none
    private(set) var bytesIn = 0
    /// Why the request ended; nil while it runs.
    private(set) var ending: Ending?
    private let maxBody: Int
    /// A body this small (or none) is read to its end after an early answer; a larger or
    /// unbounded one closes the connection instead.
    private let drainable: Bool
    private let expectsContinue: Bool
    private var continueSent = false
    /// The finished request's record while the body is being hashed.
    private var pendingRecord: IdempotencyRecord?

    /// A request whose head was screened and that goes on to admission.
    /// - Parameters:
    ///   - hasBody: Whether a body follows the head.
    ///   - drainable: Whether the body, unwanted, is small enough to read to its end after an early answer.
    ///   - closeAfterResponse: The connection ends after this request (HTTP/1.0, `Connection: close`, a drain).
    init(hasBody: Bool, drainable: Bool, expectsContinue: Bool, maxBody: Int, closeAfterResponse: Bool) {
        bodyEnded = !hasBody
        self.drainable = drainable
        self.expectsContinue = expectsContinue
        self.maxBody = maxBody
        self.closeAfterResponse = closeAfterResponse
    }

    /// Whether the partner's reads stay paused for this request's body (besides back-pressure
    /// from the upstream, which the handler measures).
    var holdsBodyReads: Bool {
        guard !bodyEnded else { return false }
        switch bodyUse {
        case .held: return true
        case .forwarded: return !bodyWanted
        case .collected, .dropped: return false
        }
    }

    /// The request is over: answered (or cut off), and its body read to the end.
    var isComplete: Bool { ending != nil && bodyEnded }

    /// Whether `100 Continue` goes out now: the gateway wants the body for the first time.
    mutating func takeContinue() -> Bool {
        guard expectsContinue, !continueSent, !bodyEnded, !responseStarted, !holdsBodyReads else { return false }
        continueSent = true
        return true
    }

    /// The connection is to end after this request (a drain).
    mutating func closeAfterThis() {
        closeAfterResponse = true
    }

    // MARK: - Screening and admission

    /// The gateway answers with this problem at once (screening refused the request, or it
    /// cannot be served).
    mutating func reject(_ problem: Problem, headers: [(String, String)]) -> Action {
        answer(.problem(problem, headers: headers))
    }

    /// Admission's answer for a request that may be keyed (it then asks for a claim) or read a task.
    mutating func admitted(_ outcome: AdmissionOutcome, keyed: Bool, taskEndpoint: Bool) -> Action {
        guard stage == .admitting, ending == nil else {
            // The client left while the store decided: what it granted is given back.
            guard case .admitted(let lease, let claimed) = outcome else { return .none }
            let won = if case .claimed? = claimed { true } else { false }
            return lease || won ? .release(Release(ending: nil, lease: lease, claim: won ? .release : .none)) : .none
        }
        switch outcome {
        case .refused(let problem):
            return answer(.problem(problem, headers: []))
        case .storeUnavailable:
            return answer(
                .problem(Problem(.upstreamUnavailable, detail: "The gateway cannot check rate limits right now; try again shortly."), headers: [("Retry-After", "1")])
            )
        case .admitted(let lease, _) where taskEndpoint:
            leaseHeld = lease
            stage = .lookingUpTask
            return .lookUpTask
        case .admitted(let lease, let claimed) where keyed:
            leaseHeld = lease
            stage = .claiming
            claim = .asked
            guard let claimed else { return .claim }
            return claimAnswered(claimed)
        case .admitted(let lease, _):
            leaseHeld = lease
            stage = .calling
            return .dispatch
        }
    }

    // MARK: - Idempotency

    /// The store's answer to the claim.
    mutating func claimAnswered(_ answer: ClaimAnswer) -> Action {
        let won = if case .claimed = answer { true } else { false }
        guard stage == .claiming, ending == nil else {
            // The client left while the store answered: a won claim is given back.
            guard claim == .asked else { return .none }
            claim = won ? .concluded : .none
            return won ? .release(Release(ending: nil, claim: .release)) : .none
        }
        switch answer {
        case .failed:
            claim = .none
            return self.answer(
                .problem(Problem(.upstreamUnavailable, detail: "The gateway cannot check idempotency keys right now; try again shortly."), headers: [("Retry-After", "1")])
            )
        case .claimed:
            claim = .held
            stage = .calling
            return .dispatch
        case .inProgress(let milliseconds):
            claim = .none
            return self.answer(
                .problem(
                    Problem(.idempotencyKeyInUse, detail: "A request with this Idempotency-Key is still in progress; retry later."),
                    headers: [("Retry-After", String(IdempotencyControl.retryAfter(milliseconds: milliseconds)))]
                )
            )
        case .completed(_, sameTarget: false):
            claim = .none
            return self.answer(.problem(Self.mismatch, headers: []))
        case .completed(let record, sameTarget: true):
            claim = .none
            stage = .comparing
            if bodyEnded { return .compare(record) }
            // The body decides: it is read and hashed, never kept.
            bodyUse = .dropped
            pendingRecord = record
            return .none
        }
    }

    /// What the body's digest said about the finished request with the key: a replay, or 422.
    mutating func compared(_ record: IdempotencyRecord, matches: Bool) -> Action {
        guard stage == .comparing, ending == nil else { return .none }
        return answer(matches ? .replay(record) : .problem(Self.mismatch, headers: []))
    }

    /// The key's finished request was a different one (method, path, query or body).
    static let mismatch = Problem(
        .idempotencyKeyReused, detail: "This Idempotency-Key was used for a different request (method, path, query or body)."
    )

    // MARK: - Dispatch

    /// How the admitted request goes on.
    mutating func dispatch(_ dispatch: Dispatch) -> Action {
        guard stage == .calling, ending == nil else { return .none }
        switch dispatch {
        case .bodyless:
            return .startCall(.none)
        case .streamed:
            bodyUse = .forwarded
            return .startCall(.streamed)
        case .collected:
            bodyUse = .collected
            stage = .collecting(.call)
            return bodyEnded ? startCollectedCall() : .none
        case .task:
            bodyUse = .collected
            stage = .collecting(.task)
            return bodyEnded ? storeTask() : .none
        }
    }

    private mutating func startCollectedCall() -> Action {
        stage = .calling
        return .startCall(.whole)
    }

    /// The accept goes to the store: from now on the key follows the task (its settlement records
    /// or releases it, whatever becomes of the request).
    private mutating func storeTask() -> Action {
        stage = .storingTask
        if claim == .held { claim = .onTask }
        return .storeTask
    }

    // MARK: - The request body

    /// A chunk of `bytes` arrived: where it goes.
    mutating func bodyReceived(_ bytes: Int) -> ChunkRoute {
        // DATA frames on an HTTP/2 request declared without a body are not forwarded.
        guard !bodyEnded else { return .drop }
        bytesIn += bytes
        if bytesIn > maxBody, bodyUse != .dropped { return .tooLarge }
        switch bodyUse {
        case .held: return .hold
        case .collected: return .collect
        case .forwarded: return bodyWanted ? .forward : .hold
        case .dropped: return .drop
        }
    }

    /// The body went over `max_request_body`: 413, or the answer is cut off when it had started.
    mutating func bodyTooLarge() -> Action {
        bodyUse = .dropped
        closeAfterResponse = true
        if responseStarted { return cutOff() }
        return answer(.problem(Problem(.payloadTooLarge, detail: "The request body is larger than \(maxBody) bytes."), headers: []))
    }

    /// The body ended.
    mutating func bodyEnd() -> Action {
        guard !bodyEnded else { return .none }
        bodyEnded = true
        guard ending == nil else { return .none }
        switch stage {
        case .comparing:
            guard let record = pendingRecord else { return .none }
            pendingRecord = nil
            return .compare(record)
        case .collecting(.call):
            return startCollectedCall()
        case .collecting(.task):
            return storeTask()
        case .calling where bodyUse == .forwarded && bodyWanted:
            return .endCallBody
        default:
            return .none
        }
    }

    /// The body's framing broke (an HTTP/1.1 parser error in the body): 400, or the answer is cut
    /// off when it had started; the connection closes either way.
    mutating func bodyBroke() -> Action {
        bodyEnded = true
        closeAfterResponse = true
        guard ending == nil else { return .none }
        if responseStarted { return cutOff() }
        return answer(.problem(Problem(.invalidRequest, detail: "The request body is not valid HTTP."), headers: []))
    }

    // MARK: - The upstream call

    /// The call is ready for the streamed body.
    mutating func callWantsBody() -> Action {
        guard stage == .calling, bodyUse == .forwarded, ending == nil else { return .none }
        bodyWanted = true
        return .sendHeldBody(end: bodyEnded)
    }

    /// The upstream's answer starts; returns whether it is forwarded.
    mutating func upstreamResponded() -> Bool {
        guard stage == .calling, ending == nil else { return false }
        stage = .responding
        responseStarted = true
        // Answered before the upload ended: the rest of it is not read.
        if !bodyEnded {
            closeAfterResponse = true
            bodyUse = .dropped
        }
        return true
    }

    /// No upstream answer can be forwarded.
    mutating func upstreamFailed(_ failure: UpstreamFailure) -> Action {
        guard stage == .calling, ending == nil else { return .none }
        let (problem, headers) = ResponseShaping.problem(for: failure)
        return answer(.problem(problem, headers: headers))
    }

    /// The answer broke off after its head went out.
    mutating func upstreamBrokeOff() -> Action {
        guard stage == .responding, ending == nil else { return .none }
        return cutOff()
    }

    // MARK: - Tasks

    /// The task store's answer for the partner (`TaskControl.accept`'s `answered`: the 202 or a 503).
    mutating func taskAnswered(_ answer: Answer) -> Action {
        guard stage == .storingTask, ending == nil else { return .none }
        return self.answer(answer)
    }

    /// Whether the task exists for good (`TaskControl.accept`'s `settled`), whatever became of
    /// the request: the key follows the task — its 202 is recorded when it exists, the key
    /// released when it never will, left to its lease when nobody can say.
    mutating func taskSettled(_ settlement: TaskControl.Settlement) -> SettlementAction {
        guard claim == .onTask else { return .none }
        claim = .concluded
        switch settlement {
        case true?: return .recordAcceptance
        case false?: return .releaseClaim
        case nil: return .none
        }
    }

    /// The response cache answers (a hit, a revalidated or stale entry) instead of the call.
    mutating func cacheAnswered(_ answer: CachedAnswer) -> Action {
        guard stage == .calling, ending == nil, !responseStarted else { return .none }
        return self.answer(.cached(answer))
    }

    /// The task status read or cancel came back with this answer.
    mutating func taskLookedUp(_ answer: Answer) -> Action {
        guard stage == .lookingUpTask, ending == nil else { return .none }
        return self.answer(answer)
    }

    // MARK: - Endings

    /// The answer (the upstream's, forwarded, or the gateway's own) went out whole.
    mutating func answerWritten() -> Action {
        guard ending == nil else { return .none }
        responseEnded = true
        return .release(finish(.answered))
    }

    /// The client went away (closed the connection, reset the stream): the call is cancelled and
    /// what is held is given back — except a claim whose store call is out, which its answer
    /// settles, and a key on a task being stored, which the task's settlement settles.
    mutating func clientWentAway() -> Action {
        bodyEnded = true
        guard ending == nil else { return .none }
        return .cancelCall(finish(.clientGone))
    }

    /// Starts an answer from the gateway: the body is no longer wanted (held chunks dropped, the
    /// rest drained when small, else the connection closes after the answer).
    private mutating func answer(_ answer: Answer) -> Action {
        guard !responseStarted, ending == nil else { return .none }
        responseStarted = true
        stage = .responding
        if !bodyEnded {
            bodyUse = .dropped
            if !drainable { closeAfterResponse = true }
        }
        return .answer(answer)
    }

    /// The answer had started and cannot go on: the partner must not take it for whole.
    private mutating func cutOff() -> Action {
        closeAfterResponse = true
        return .releaseAndClose(finish(.cutOff))
    }

    /// Ends the request: what it holds now is given back (the concurrency lease; the claim it
    /// holds, recorded only when the whole exchange went through); a claim still asked for, or
    /// on a task being stored, is settled by its store answer.
    private mutating func finish(_ how: Ending) -> Release {
        ending = how
        stage = .finished
        var release = Release(ending: how, lease: leaseHeld)
        leaseHeld = false
        if claim == .held {
            claim = .concluded
            release.claim = how == .answered && bodyEnded ? .record : .release
        }
        return release
    }
}
