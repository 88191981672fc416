import NIOCore
import NIOHTTP1
import SluiceCore

/// One partner request on its connection's event loop: what it is (head, record, snapshot,
/// plan), what it uses (admission, idempotency key, upstream call, spans, body chunks) and its
/// lifecycle (`machine`). The handler keeps the current one; store answers and upstream
/// callbacks hold on to theirs, so that an answer that comes after the request ended still
/// finds what to give back.
final class PartnerRequest {
    var machine: PartnerRequestStateMachine
    var record: RequestRecord
    let snapshot: GatewaySnapshot
    let head: PartnerRequestHead
    /// Set for a request that is forwarded (or becomes a task).
    var plan: ForwardPlan?
    /// Set for a status read or cancel of a task.
    var taskEndpoint: TaskEndpointRequest?
    /// Admission's decision (its concurrency lease is given back through it).
    var admission: Admission?
    /// Set for a request with an `Idempotency-Key` on a POST or PATCH route.
    var idempotency: IdempotentRequest?
    /// Set for a GET or HEAD on a route with `cache:` (stage 4b).
    var cache: CacheExchange?
    /// The upstream, the rewritten head and whether it may be sent twice (stage 5).
    var upstream: (runtime: UpstreamRuntime, head: HTTPRequestHead, retryable: Bool)?
    var call: UpstreamCall?
    /// Body chunks that came before their use was known (or before the call wanted them).
    var held: [ByteBuffer] = []
    /// The body read whole (a retryable call's, a task's).
    var collected: ByteBuffer?
    /// Body bytes handed to the upstream connection and not yet written.
    var unwrittenBodyBytes = 0
    /// Its spans, when traces are exported.
    var tracing: RequestTracing
    /// What it told the connection's watchdog.
    var watchdog = WatchdogTicket()
    /// The request's last part (`.end`) arrived: later parts belong to the next request.
    var endReceived = false

    init(machine: PartnerRequestStateMachine, record: RequestRecord, snapshot: GatewaySnapshot, head: PartnerRequestHead, tracing: RequestTracing) {
        self.machine = machine
        self.record = record
        self.snapshot = snapshot
        self.head = head
        self.tracing = tracing
    }

    /// Moves or drops the held chunks once the machine knows what the body is for.
    func settleHeldChunks() {
        guard !held.isEmpty else { return }
        switch machine.bodyUse {
        case .collected:
            for chunk in held { collected?.writeImmutableBuffer(chunk) }
            held.removeAll()
        case .dropped:
            held.removeAll()
        case .held, .forwarded:
            break
        }
    }
}
