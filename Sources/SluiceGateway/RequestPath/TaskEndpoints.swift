import Logging
import NIOCore
import SluiceCore

/// `GET` (status) and `DELETE` (cancel) of `/{version}/tasks/{id}` (SPEC §3 Async tasks): the
/// owner's task, else 404 (so ids cannot be probed); a status read carries `Retry-After` while
/// the task is not finished, and its result only once it is.
enum TaskEndpoints {
    /// Asks the store and hands the answer to `completion`, on `eventLoop`.
    static func answer(
        _ endpoint: TaskEndpointRequest, snapshot: GatewaySnapshot, logger: Logger, on eventLoop: any EventLoop,
        completion: @escaping (PartnerRequestStateMachine.Answer) -> Void
    ) {
        let tasks = snapshot.tasks
        let notFound = PartnerRequestStateMachine.Answer.problem(Problem(.notFound, detail: "There is no task '\(endpoint.id.text)'."), headers: [])
        let unavailable = PartnerRequestStateMachine.Answer.problem(
            Problem(.upstreamUnavailable, detail: "The gateway cannot read tasks right now; try again shortly."), headers: [("Retry-After", "1")]
        )
        switch endpoint.action {
        case .status:
            tasks.status(endpoint.id, partner: endpoint.partner.id, on: eventLoop) { result in
                switch result {
                case .success(.found(let record)):
                    let hint = record.lifecycle.status.isFinished ? [] : [("Retry-After", String(TaskControl.pollHint(for: record, snapshot)))]
                    completion(.document(status: 200, body: Array(TaskDocument.status(record)), headers: hint))
                case .success(.notFound):
                    completion(notFound)
                case .failure:
                    completion(unavailable)
                }
            }
        case .cancel:
            let notify = endpoint.partner.policy.webhook != nil
            tasks.cancel(endpoint.id, partner: endpoint.partner.id, notify: notify, on: eventLoop) { result in
                switch result {
                case .success(.cancelled(let record)):
                    logger.info("task cancelled", metadata: TaskWorkers.metadata(record))
                    completion(.document(status: 200, body: Array(TaskDocument.status(record)), headers: []))
                case .success(.conflict(let record)):
                    completion(
                        .problem(
                            Problem(.taskNotCancellable, detail: "Only a queued task can be cancelled; this one is \(record.lifecycle.status.rawValue)."),
                            headers: []
                        )
                    )
                case .success(.notFound):
                    completion(notFound)
                case .failure:
                    completion(unavailable)
                }
            }
        }
    }
}
