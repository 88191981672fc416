import Foundation
import Logging
import NIOCore
import SluiceCore
import SluiceStore

/// Async tasks on the request path for one policy snapshot (SPEC §3 Async tasks): accepts a
/// request as a task, answers status reads and cancels, owner only. Each is one store step (a
/// cancel may retry its compare and set when a worker moved the task meanwhile), answered on
/// the request's loop.
struct TaskControl: Sendable {
    let store: any SharedStore
    /// How long tasks and their results are kept (`tasks.retention`).
    let retention: Duration
    /// This instance's name in task histories.
    let instance: String
    /// Wakes this instance's workers (a task was just accepted here).
    let wakeWorkers: @Sendable () -> Void
    let clock: EpochClock
    let metrics: GatewayMetrics
    let logger: Logger

    /// What a status read or a cancel found.
    enum Lookup {
        case found(TaskRecord)
        /// No such task, or another partner's: both are 404, so ids cannot be probed.
        case notFound
    }

    enum CancelOutcome {
        case cancelled(TaskRecord)
        case conflict(TaskRecord)
        case notFound
    }

    /// What the partner is told about an accept.
    enum AcceptAnswer: Equatable {
        /// The task is stored: 202.
        case accepted
        /// An identical request's task answers it (the route's `dedupe:`): 202 with that task.
        case duplicate(TaskRecord)
        /// It is not stored, or it is not known yet whether it is: 503.
        case unavailable
    }

    /// Whether the task exists for good (`true`: it runs; `false`: it never will); nil when the
    /// store could not say within `resolutionWindow` (a claim on it is then left to its lease).
    typealias Settlement = Bool?

    /// How long a lost accept's fate is asked about before the gateway gives up.
    static let resolutionWindow: Duration = .seconds(600)

    /// Stores the task and its request and enqueues it (one store step on the bulk lane).
    /// `answered` is called once, as soon as the partner can be told; `settled` once, when it is
    /// known for good whether the task exists — at once, usually. When the accept's answer was
    /// lost (a timeout, a dropped connection: it may have been applied), the store is asked what
    /// became of it before the partner is answered: a stored task is accepted after all. If the
    /// store cannot say, the partner gets 503 and the gateway keeps asking, this time taking back
    /// a stored task nothing has touched (so the 503 stays true), until the store answers.
    /// With `dedupe`, an identical request's task (queued, running, or succeeded within the
    /// window) answers instead, and nothing is stored.
    func accept(
        _ record: TaskRecord, request: TaskRequest, dedupe: TaskDedupe?, on eventLoop: any EventLoop,
        answered: @escaping (AcceptAnswer) -> Void, settled: @escaping (Settlement) -> Void
    ) {
        store.acceptTask(record, request: request, retention: retention, dedupe: dedupe, on: eventLoop) { result in
            switch result {
            case .success(.accepted):
                wakeWorkers()
                answered(.accepted)
                settled(true)
            case .success(.duplicate(let earlier)):
                answerDuplicate(earlier, route: record.route, on: eventLoop, answered: answered, settled: settled)
            case .success(.refused):
                // The id was taken (practically never) or voided: nothing was stored.
                answered(.unavailable)
                settled(false)
            case .failure(let error as RedisError) where error.mayHaveBeenApplied:
                resolve(record.id, on: eventLoop, answered: answered, settled: settled)
            case .failure:
                answered(.unavailable)
                settled(false)
            }
        }
    }

    /// Answers with an identical request's task as it is now. Gone meanwhile (it expired): 503,
    /// and the partner's next try makes a task of its own.
    private func answerDuplicate(
        _ id: TaskID, route: String, on eventLoop: any EventLoop, answered: @escaping (AcceptAnswer) -> Void,
        settled: @escaping (Settlement) -> Void
    ) {
        store.task(id, .status, on: eventLoop) { result in
            guard case .success(let earlier?) = result else {
                answered(.unavailable)
                return settled(false)
            }
            metrics.taskDeduplicated(route: route)
            answered(.duplicate(earlier))
            settled(true)
        }
    }

    /// Asks once what became of a lost accept, while the partner waits for its answer.
    private func resolve(
        _ id: TaskID, on eventLoop: any EventLoop, answered: @escaping (AcceptAnswer) -> Void, settled: @escaping (Settlement) -> Void
    ) {
        store.resolveAccept(id, withdraw: false, on: eventLoop) { result in
            switch result {
            case .success(.stored), .success(.moved):
                wakeWorkers()
                answered(.accepted)
                settled(true)
            case .success(.voided), .success(.withdrawn):
                answered(.unavailable)
                settled(false)
            case .failure:
                answered(.unavailable)
                withdraw(id, on: eventLoop, wait: .milliseconds(100), until: .now() + TimeAmount(Self.resolutionWindow), settled: settled)
            }
        }
    }

    /// After a 503 whose accept may have gone through: asks, with backoff, until the store
    /// answers, taking back a task nothing has touched. A task already started stays (and runs).
    private func withdraw(_ id: TaskID, on eventLoop: any EventLoop, wait: Duration, until deadline: NIODeadline, settled: @escaping (Settlement) -> Void) {
        guard NIODeadline.now() < deadline else {
            logger.error("gave up asking whether a task whose accept timed out was stored", metadata: ["task": .string(id.text)])
            return settled(nil)
        }
        eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(wait)) {
            store.resolveAccept(id, withdraw: true, on: eventLoop) { result in
                switch result {
                case .success(.voided), .success(.withdrawn):
                    settled(false)
                case .success(.stored), .success(.moved):
                    logger.warning(
                        "a task whose accept timed out was stored and has started; it runs although the partner was answered 503",
                        metadata: ["task": .string(id.text)]
                    )
                    settled(true)
                case .failure:
                    withdraw(id, on: eventLoop, wait: min(wait * 2, .seconds(5)), until: deadline, settled: settled)
                }
            }
        }
    }

    /// The owner's task, with its result once it finished.
    func status(_ id: TaskID, partner: String, on eventLoop: any EventLoop, completion: @escaping (Result<Lookup, any Error>) -> Void) {
        store.task(id, .statusAndResult, on: eventLoop) { result in
            completion(result.map { record in record.flatMap { $0.partner == partner ? .found($0) : nil } ?? .notFound })
        }
    }

    /// Cancels a queued task of `partner` (and schedules its `task.cancelled` webhook with the
    /// transition when the partner has a webhook).
    func cancel(
        _ id: TaskID, partner: String, notify: Bool, on eventLoop: any EventLoop,
        completion: @escaping (Result<CancelOutcome, any Error>) -> Void
    ) {
        cancel(id, partner: partner, notify: notify, attemptsLeft: 3, on: eventLoop, completion: completion)
    }

    private func cancel(
        _ id: TaskID, partner: String, notify: Bool, attemptsLeft: Int, on eventLoop: any EventLoop,
        completion: @escaping (Result<CancelOutcome, any Error>) -> Void
    ) {
        store.task(id, .status, on: eventLoop) { result in
            switch result {
            case .failure(let error):
                completion(.failure(error))
            case .success(let found):
                guard let found, found.partner == partner else { return completion(.success(.notFound)) }
                var changed = found
                let now = clock()
                guard case .cancelled = changed.lifecycle.cancel(at: now, instance: instance) else {
                    return completion(.success(.conflict(found)))
                }
                let message = notify ? WebhookMessage(finished: changed, at: now) : nil
                store.replaceTask(changed, from: found.revision, retention: retention, notify: message, on: eventLoop) { replaced in
                    switch replaced {
                    case .success(true):
                        completion(.success(.cancelled(changed)))
                    case .success(false) where attemptsLeft > 1:
                        // A worker moved the task meanwhile: look again.
                        cancel(id, partner: partner, notify: notify, attemptsLeft: attemptsLeft - 1, on: eventLoop, completion: completion)
                    case .success(false):
                        completion(.failure(TaskControlError.contended))
                    case .failure(let error):
                        completion(.failure(error))
                    }
                }
            }
        }
    }

    /// The `Retry-After` seconds for polling a task that is not finished: a twentieth of the
    /// route's timeout, between 1 and 30 s (a 30-minute price calculation is polled every 30 s).
    static func pollHint(routeTimeout: Duration) -> Int {
        max(1, min(30, Int(routeTimeout.components.seconds / 20)))
    }

    /// The polling hint for a task of the route `record.route` (as the policies now say).
    static func pollHint(for record: TaskRecord, _ snapshot: GatewaySnapshot) -> Int {
        let policy = snapshot.policy
        guard let route = policy.routes.routes.first(where: { $0.id == record.route }),
            let upstream = policy.upstreams[route.upstream]
        else { return 5 }
        return pollHint(routeTimeout: route.requestTimeout ?? upstream.requestTimeout)
    }
}

enum TaskControlError: Error {
    /// The task kept changing under a cancel.
    case contended
}
