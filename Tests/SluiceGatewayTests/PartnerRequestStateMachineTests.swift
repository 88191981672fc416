import SluiceCore
import Testing
@testable import SluiceGateway

/// The partner request's lifecycle without sockets: every way a request ends gives back its
/// concurrency lease and its idempotency claim exactly once, and a store answer that comes after
/// the end gives back what it brought.
struct PartnerRequestStateMachineTests {
    typealias Machine = PartnerRequestStateMachine

    private func machine(body: Bool = false, drainable: Bool = true, continue expects: Bool = false, close: Bool = false) -> Machine {
        Machine(hasBody: body, drainable: drainable, expectsContinue: expects, maxBody: 1_000, closeAfterResponse: close)
    }

    private let record = IdempotencyRecord(
        fingerprint: RequestFingerprint(target: RequestFingerprint.target(method: "POST", pathAndQuery: "/orders"), body: BodyHasher().finalize()),
        status: 201, headers: [], body: [], bodyKept: true
    )

    private func release(_ action: Machine.Action) -> Machine.Release? {
        switch action {
        case .release(let release), .cancelCall(let release), .releaseAndClose(let release): release
        default: nil
        }
    }

    private func isAnswer(_ action: Machine.Action, status: Int? = nil) -> Bool {
        guard case .answer(let answer) = action else { return false }
        guard let status else { return true }
        switch answer {
        case .problem(let problem, _): return problem.status == status
        case .replay(let record): return record.status == status
        case .document(let documentStatus, _, _): return documentStatus == status
        case .cached(let cached): return (cached.notModified ? 304 : cached.response.status) == status
        }
    }

    /// A GET is admitted with a lease, dispatched without a body, answered, and gives the lease back once.
    @Test func plainRequestReleasesItsLeaseOnce() {
        var request = machine()
        guard case .dispatch = request.admitted(.admitted(lease: true, claim: nil), keyed: false, taskEndpoint: false) else { Issue.record("no dispatch"); return }
        guard case .startCall(.none) = request.dispatch(.bodyless) else { Issue.record("no call"); return }
        let step1 = request.upstreamResponded()
        #expect(step1)
        let step2 = request.answerWritten()
        #expect(release(step2) == Machine.Release(ending: .answered, lease: true))
        #expect(request.isComplete)
        guard case .none = request.clientWentAway() else { Issue.record("a second ending"); return }
    }

    /// A refused request holds nothing: its answer ends it without a lease.
    @Test func refusedRequestHoldsNothing() {
        var request = machine()
        let step3 = request.admitted(.refused(Problem(.rateLimited, detail: "slow down")), keyed: true, taskEndpoint: false)
        #expect(isAnswer(step3, status: 429))
        #expect(request.claim == .none)
        let step4 = request.answerWritten()
        #expect(release(step4) == Machine.Release(ending: .answered))
    }

    /// The client leaves while admission is in the store: the request ends at once (499), and the
    /// lease and won claim that admission brings later are given back.
    @Test func clientGoneWhileAdmissionIsOutGivesBackWhatItBrings() {
        var request = machine()
        let step5 = request.clientWentAway()
        #expect(release(step5) == Machine.Release(ending: .clientGone))
        let late = request.admitted(.admitted(lease: true, claim: .claimed), keyed: true, taskEndpoint: false)
        #expect(release(late) == Machine.Release(ending: nil, lease: true, claim: .release))
        guard case .none = request.admitted(.refused(Problem(.rateLimited, detail: "x")), keyed: true, taskEndpoint: false) else {
            Issue.record("a refusal brings nothing"); return
        }
    }

    /// The client leaves while a claim of its own is in the store: a won claim is released when it comes.
    @Test func clientGoneWhileTheClaimIsOutReleasesTheWonClaim() {
        var request = machine()
        guard case .claim = request.admitted(.admitted(lease: false, claim: nil), keyed: true, taskEndpoint: false) else { Issue.record("no claim"); return }
        let step6 = request.clientWentAway()
        #expect(release(step6) == Machine.Release(ending: .clientGone))
        let step7 = request.claimAnswered(.claimed)
        #expect(release(step7) == Machine.Release(ending: nil, claim: .release))
    }

    /// A keyed request streams its body to the call and records its response when the whole
    /// exchange went through.
    @Test func keyedStreamedRequestIsRecorded() {
        var request = machine(body: true)
        #expect(request.holdsBodyReads)
        guard case .dispatch = request.admitted(.admitted(lease: false, claim: .claimed), keyed: true, taskEndpoint: false) else { Issue.record("no dispatch"); return }
        #expect(request.claim == .held)
        guard case .startCall(.streamed) = request.dispatch(.streamed) else { Issue.record("no streamed call"); return }
        let step8 = request.bodyReceived(10)
        #expect(step8 == .hold, "the call does not want the body yet")
        guard case .sendHeldBody(end: false) = request.callWantsBody() else { Issue.record("held body not sent"); return }
        let step9 = request.bodyReceived(10)
        #expect(step9 == .forward)
        guard case .endCallBody = request.bodyEnd() else { Issue.record("body not ended"); return }
        let step10 = request.upstreamResponded()
        #expect(step10)
        let step11 = request.answerWritten()
        #expect(release(step11) == Machine.Release(ending: .answered, claim: .record))
    }

    /// An answer before the upload ended: the rest of the body is dropped, the connection closes
    /// after the answer, and the key is released, not recorded.
    @Test func answerBeforeTheBodyEndedReleasesTheKey() {
        var request = machine(body: true)
        _ = request.admitted(.admitted(lease: true, claim: .claimed), keyed: true, taskEndpoint: false)
        _ = request.dispatch(.streamed)
        _ = request.callWantsBody()
        let step12 = request.upstreamResponded()
        #expect(step12)
        #expect(request.closeAfterResponse)
        let step13 = request.bodyReceived(10)
        #expect(step13 == .drop)
        let step14 = request.answerWritten()
        #expect(release(step14) == Machine.Release(ending: .answered, lease: true, claim: .release))
        #expect(!request.isComplete)
        guard case .none = request.bodyEnd() else { Issue.record("nothing follows the drained end"); return }
        #expect(request.isComplete)
    }

    /// A finished key: a different target is 422 at once; the same one waits for the body's
    /// digest, which decides between the replay and 422.
    @Test func finishedKeyIsComparedOnceTheBodyEnded() {
        var other = machine(body: true)
        _ = other.admitted(.admitted(lease: false, claim: nil), keyed: true, taskEndpoint: false)
        let step15 = other.claimAnswered(.completed(record, sameTarget: false))
        #expect(isAnswer(step15, status: 422))

        var same = machine(body: true, continue: true)
        _ = same.admitted(.admitted(lease: false, claim: .completed(record, sameTarget: true)), keyed: true, taskEndpoint: false)
        #expect(same.stage == .comparing && !same.holdsBodyReads)
        let step16 = same.takeContinue()
        let step17 = same.takeContinue()
        #expect(step16 && !step17, "100 Continue once, when the body is wanted")
        let step18 = same.bodyReceived(5)
        #expect(step18 == .drop)
        guard case .compare(let found) = same.bodyEnd() else { Issue.record("no comparison"); return }
        let step19 = same.compared(found, matches: true)
        #expect(isAnswer(step19, status: 201))
        let step20 = same.answerWritten()
        #expect(release(step20) == Machine.Release(ending: .answered))
    }

    /// A keyed task: once its accept is in the store the key follows the task, not the request —
    /// a client that leaves releases nothing, and the settlement records or releases the key.
    @Test(arguments: [(true as Bool?, Machine.SettlementAction.recordAcceptance), (false, .releaseClaim), (nil, Machine.SettlementAction.none)])
    func keyFollowsTheTask(_ example: (settlement: Bool?, action: Machine.SettlementAction)) {
        var request = machine(body: true)
        _ = request.admitted(.admitted(lease: true, claim: .claimed), keyed: true, taskEndpoint: false)
        guard case .none = request.dispatch(.task) else { Issue.record("the task waits for its body"); return }
        let step21 = request.bodyReceived(8)
        #expect(step21 == .collect)
        guard case .storeTask = request.bodyEnd() else { Issue.record("no task stored"); return }
        #expect(request.claim == .onTask)
        let step22 = request.clientWentAway()
        #expect(release(step22) == Machine.Release(ending: .clientGone, lease: true))
        guard case .none = request.taskAnswered(.document(status: 202, body: [], headers: [])) else { Issue.record("answer after the end"); return }
        let step23 = request.taskSettled(example.settlement)
        #expect(step23 == example.action)
        let step24 = request.taskSettled(true)
        #expect(step24 == .none, "settled once")
    }

    /// A client that leaves while the task body is still uploading releases the key at once.
    @Test func clientGoneBeforeTheAcceptReleasesTheKey() {
        var request = machine(body: true)
        _ = request.admitted(.admitted(lease: false, claim: .claimed), keyed: true, taskEndpoint: false)
        _ = request.dispatch(.task)
        let step25 = request.clientWentAway()
        #expect(release(step25) == Machine.Release(ending: .clientGone, claim: .release))
    }

    /// A body over the limit: 413 while nothing went out, a cut-off (and a closed connection)
    /// after the answer started.
    @Test func bodyOverTheLimit() {
        var early = machine(body: true)
        _ = early.admitted(.admitted(lease: true, claim: nil), keyed: false, taskEndpoint: false)
        _ = early.dispatch(.streamed)
        _ = early.callWantsBody()
        let step26 = early.bodyReceived(1_001)
        #expect(step26 == .tooLarge)
        let step27 = early.bodyTooLarge()
        #expect(isAnswer(step27, status: 413))
        #expect(early.closeAfterResponse)

        var late = machine(body: true)
        _ = late.admitted(.admitted(lease: true, claim: nil), keyed: false, taskEndpoint: false)
        _ = late.dispatch(.streamed)
        _ = late.callWantsBody()
        let step28 = late.upstreamResponded()
        #expect(step28)
        let step29 = late.bodyReceived(2_000)
        #expect(step29 == .drop, "answered already: the rest is dropped, not counted against it")
        guard case .releaseAndClose(let release) = late.bodyBroke() else { Issue.record("not cut off"); return }
        #expect(release == Machine.Release(ending: .cutOff, lease: true))
    }

    /// The upstream breaks off mid-answer: cut off, the connection closes.
    @Test func brokenAnswerIsCutOff() {
        var request = machine()
        _ = request.admitted(.admitted(lease: true, claim: .claimed), keyed: true, taskEndpoint: false)
        _ = request.dispatch(.bodyless)
        let step30 = request.upstreamResponded()
        #expect(step30)
        guard case .releaseAndClose(let release) = request.upstreamBrokeOff() else { Issue.record("not cut off"); return }
        #expect(release == Machine.Release(ending: .cutOff, lease: true, claim: .release))
        let step31 = request.upstreamResponded()
        #expect(!step31)
    }

    /// An early answer drains a small body and closes the connection for a large or unbounded one.
    @Test(arguments: [true, false]) func earlyAnswerDrainsOnlySmallBodies(drainable: Bool) {
        var request = machine(body: true, drainable: drainable)
        let step32 = request.reject(Problem(.unauthorized, detail: "no key"), headers: [])
        #expect(isAnswer(step32, status: 401))
        #expect(request.closeAfterResponse == !drainable)
        let step33 = request.bodyReceived(10)
        #expect(step33 == .drop && !request.holdsBodyReads)
    }

    /// A task poll is admitted to a lookup; its answer after the client left is dropped.
    @Test func taskPollAfterTheClientLeft() {
        var request = machine()
        guard case .lookUpTask = request.admitted(.admitted(lease: true, claim: nil), keyed: false, taskEndpoint: true) else { Issue.record("no lookup"); return }
        let step34 = request.clientWentAway()
        #expect(release(step34) == Machine.Release(ending: .clientGone, lease: true))
        guard case .none = request.taskLookedUp(.document(status: 200, body: [], headers: [])) else { Issue.record("answer after the end"); return }
    }

    /// `100 Continue` waits until the gateway wants the body: not while admission or the call is pending.
    @Test func continueWaitsUntilTheBodyIsWanted() {
        var request = machine(body: true, continue: true)
        let step35 = request.takeContinue()
        #expect(!step35)
        _ = request.admitted(.admitted(lease: false, claim: nil), keyed: false, taskEndpoint: false)
        _ = request.dispatch(.streamed)
        let step36 = request.takeContinue()
        #expect(!step36)
        _ = request.callWantsBody()
        let step37 = request.takeContinue()
        #expect(step37)
    }
}
