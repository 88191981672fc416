import Foundation
import SluiceCore

/// Stage 5b of the request path: a request that becomes a task — its record, the request the
/// workers send for it (the headers the upstream would have received, with `Idempotency-Key:
/// <task id>`), and the 202 the partner gets (kept for the request's own `Idempotency-Key` once
/// the task exists, whatever became of the request).
enum TaskAcceptance {
    /// The task record and request for `request`, whose body was read whole, and its dedupe
    /// when the route has `dedupe:` (partner, method, the path and query as sent, the body).
    static func make(
        _ request: PartnerRequest, _ plan: ForwardPlan, connection: PartnerConnection, runtime: GatewayRuntime
    ) -> (TaskRecord, TaskRequest, TaskDedupe?) {
        let tasks = request.snapshot.tasks
        let body = request.collected.map { Data($0.readableBytesView) } ?? Data()
        request.collected = nil
        let dedupe = plan.route.policy.dedupe.map {
            TaskDedupe(partner: plan.partner.id, method: request.head.method.rawValue, pathAndQuery: request.head.target, body: body, window: $0)
        }
        let id = tasks.store.newTaskID(for: dedupe)
        // The task's runs join the accepting request's trace (as children of its span when tracing).
        let traceparent = request.tracing.serverTraceparent(runtime.tracing)
            ?? RequestIdentity.traceparent(request.record.trace, spanID: runtime.identifiers.next64())
        let forwarding = UpstreamDispatch.forwardingContext(request, plan, connection: connection, traceparent: traceparent)
        var headers: [TaskHeader] = []
        HeaderRewriter.forwardRequest(request.head.headers, forwarding) { name, value in
            guard !HeaderName.equals(name, "idempotency-key") else { return }
            headers.append(TaskHeader(name, value))
        }
        headers.append(TaskHeader("Idempotency-Key", id.text))
        let taskRequest = TaskRequest(
            method: request.head.method.rawValue, upstream: plan.upstream.name, pathAndQuery: plan.target, headers: headers, body: body,
            timeoutMilliseconds: plan.requestTimeout.milliseconds
        )
        let record = TaskRecord(
            id: id, partner: plan.partner.id, version: plan.version.version.name, route: plan.route.id,
            lifecycle: TaskLifecycle(
                acceptedAt: tasks.clock(), instance: tasks.instance, requestID: request.record.requestID,
                note: plan.canary.map { "runs on the route's canary upstream '\($0.upstream.name)'" }
            ),
            traceparent: forwarding.traceparent, upstream: plan.upstream.name
        )
        return (record, taskRequest, dedupe)
    }

    /// The 202: where to poll, how soon, and `Preference-Applied` when the partner asked for it.
    static func accepted(_ record: TaskRecord, _ plan: ForwardPlan) -> PartnerRequestStateMachine.Answer {
        var headers = [("Location", TaskDocument.statusPath(record)), ("Retry-After", String(TaskControl.pollHint(routeTimeout: plan.requestTimeout)))]
        if plan.async == .requested { headers.append(("Preference-Applied", "respond-async")) }
        return .document(status: 202, body: Array(TaskDocument.accepted(record)), headers: headers)
    }

    /// The answer when the task is not stored.
    static let unavailable = PartnerRequestStateMachine.Answer.problem(
        Problem(.upstreamUnavailable, detail: "The gateway cannot accept tasks right now; try again shortly."), headers: [("Retry-After", "1")]
    )
}
