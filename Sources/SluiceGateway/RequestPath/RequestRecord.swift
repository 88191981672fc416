import NIOCore
import NIOHTTP1
import SluiceCore

/// What happened to one partner request: the response headers every answer carries, and what
/// the access log, the metrics and usage counting record at the end. A plain value filled in
/// stage by stage.
struct RequestRecord {
    let requestID: String
    let method: String
    /// Path without the query.
    let path: Substring
    /// `?…` or empty.
    let query: Substring
    let started: NIODeadline
    /// The W3C trace the request belongs to (continued from the partner's `traceparent`, or new).
    var trace: TraceIdentity
    var partner: String?
    var version: String?
    var route: String?
    var upstream: String?
    /// The route's canary, when the request went to it (its outcome counts toward `abort_on`).
    var canary: CanarySplit?
    /// The upstream target of the call's last try (`http://host:port`).
    var target: String?
    var status = 0
    var problem: String?
    var upstreamError: String?
    /// When the upstream call started, and how long until the upstream's response head.
    var upstreamStarted: NIODeadline?
    var upstreamDuration: Duration?
    var bytesIn = 0
    var bytesOut = 0
    var clientGone = false
    /// The request was accepted as a task (202).
    var taskAccepted = false
    /// What the request's `Idempotency-Key` led to, for the access log.
    var idempotency: IdempotencyResult?
    /// What the response cache did for it (`CacheExchange.Result`), for the access log.
    var cache: String?
    /// The answer came from a cached entry (usage's `cached`).
    var answeredFromCache = false
    /// What every response to this request carries besides `X-Request-Id`: the version's
    /// `Deprecation`/`Sunset`, the `RateLimit` fields and a refusal's `Retry-After`.
    private var versionHeaders: (deprecation: String?, sunset: String?) = (nil, nil)
    private var limitHeaders: (policy: String?, state: String?, retryAfter: String?) = (nil, nil, nil)

    /// Stage 1, identity: the request id (a valid incoming `X-Request-Id`, else a new one).
    init(_ head: PartnerRequestHead, identifiers: IdentifierGenerator, started: NIODeadline) {
        let incoming = head.headers.first(name: "x-request-id")
        requestID = incoming.flatMap { RequestIdentity.isValidRequestID($0) ? $0 : nil } ?? identifiers.requestID()
        method = head.method.rawValue
        let target = Substring(head.target)
        if let question = target.utf8.firstIndex(of: UInt8(ascii: "?")) {
            path = target[..<question]
            query = target[question...]
        } else {
            path = target
            query = ""
        }
        self.started = started
        trace = RequestIdentity.trace(incoming: head.headers.first(name: "traceparent"), requestID: requestID, generator: identifiers)
    }

    /// How many headers `addResponseHeaders` adds at most.
    static let responseHeaderCount = 6

    /// Adds the headers every response to this request carries.
    func addResponseHeaders(to headers: inout HTTPHeaders) {
        headers.add(name: "X-Request-Id", value: requestID)
        if let deprecation = versionHeaders.deprecation { headers.add(name: "Deprecation", value: deprecation) }
        if let sunset = versionHeaders.sunset { headers.add(name: "Sunset", value: sunset) }
        if let policy = limitHeaders.policy { headers.add(name: "RateLimit-Policy", value: policy) }
        if let state = limitHeaders.state { headers.add(name: "RateLimit", value: state) }
        if let retryAfter = limitHeaders.retryAfter { headers.add(name: "Retry-After", value: retryAfter) }
    }

    /// The status the metrics and the log report: 499 when the client went away unanswered.
    var reportedStatus: Int { clientGone && status == 0 ? 499 : status }

    /// The request as usage counting sees it (`duration` from head to end of response).
    func usageEvent(status: Int, duration: Duration) -> UsageEvent {
        var event = UsageEvent(status: status, bytesIn: bytesIn, bytesOut: bytesOut, microseconds: duration.microseconds)
        event.replayed = idempotency == .replayed
        event.cached = answeredFromCache
        event.taskAccepted = taskAccepted
        if status == 429 {
            switch problem {
            case ProblemType.rateLimited.rawValue: event.refusal = .rateLimited
            case ProblemType.quotaExceeded.rawValue: event.refusal = .quotaRejected
            case ProblemType.concurrencyLimited.rawValue: event.refusal = .concurrencyLimited
            default: break
            }
        }
        return event
    }

    /// Adds the RateLimit headers (and Retry-After for refusals) to every response.
    mutating func adopt(_ admission: Admission) {
        guard let limits = admission.limits, let decision = admission.decision else { return }
        limitHeaders = (
            RateLimitHeaders.policy(limits, decision), RateLimitHeaders.state(limits, decision),
            decision.verdict == .admitted ? nil : String(RateLimitHeaders.retryAfter(decision))
        )
    }

    /// Records the version and adds its Deprecation and Sunset headers to every response.
    mutating func adopt(version rules: VersionRules) {
        version = rules.version.name
        versionHeaders = (rules.deprecationHeader, rules.sunsetHeader)
    }
}
