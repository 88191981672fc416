import SluiceCore

/// Everything needed to forward an admitted request.
struct ForwardPlan {
    let partner: Partner
    let version: VersionRules
    let route: Route
    /// The route's upstream, or its canary's for a partner on the canary.
    let upstream: UpstreamPolicy
    /// Set when the request goes to the route's canary.
    let canary: CanarySplit?
    /// Upstream path and query (without the upstream's base path), e.g. `/api/orders/17?expand=lines`.
    let target: String
    let bodyLength: RequestBodyLength
    /// The `Idempotency-Key` of a POST or PATCH route's request, when it sent one.
    let idempotencyKey: String?
    /// Set when the request becomes a task (202) instead of being forwarded.
    let async: AsyncAcceptance?

    /// The route's request timeout on the upstream the request goes to.
    var requestTimeout: Duration { route.requestTimeout(on: upstream) }
}

/// Why a request becomes a task.
enum AsyncAcceptance: Equatable {
    /// The route is `async: always`.
    case always
    /// The route is `async: on-request` and the partner sent `Prefer: respond-async`
    /// (answered with `Preference-Applied: respond-async`).
    case requested
}

/// A partner's request about one of its tasks (`/{version}/tasks/{id}`).
struct TaskEndpointRequest {
    enum Action {
        case status
        case cancel
    }

    let partner: Partner
    let version: VersionRules
    let action: Action
    let id: TaskID
}

/// What stages 1 and 2 decided.
enum Screening {
    /// Answer with this problem (and these extra headers); nothing goes upstream.
    case reject(Problem, headers: [(String, String)])
    /// Admission next, then forwarding (or a task).
    case forward(ForwardPlan)
    /// A status read or cancel of a task: answered from the store.
    case task(TaskEndpointRequest)
}
