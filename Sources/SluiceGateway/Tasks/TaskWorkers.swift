import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SluiceCore
import SluiceStore
import Synchronization

/// This instance's task workers (SPEC §3 Async tasks): at most `tasks.workers` tasks run at once
/// (and each upstream's bulkhead applies, as to partner requests). They take queued tasks from
/// the store, renew their leases while the calls run, and record each result with the task's
/// last transition and its webhook event. A task whose worker died is taken over after
/// `tasks.lease`; a lost lease cancels the local run. On shutdown no new task is taken, running
/// ones may finish until the drain deadline, and the rest are handed back to the queue.
final class TaskWorkers: Service, Sendable {
    private let runtime: GatewayRuntime
    let instance: String
    private let clock: EpochClock
    private let drainTimeout: Duration
    /// How often `sluice_tasks` and `sluice_task_queue_oldest_seconds` are read from the store.
    private let censusInterval: Duration
    private let eventLoops: any EventLoopGroup
    private let poller: StorePoller<TaskClaim>
    private let running = Mutex<[TaskClaim: TaskExchange?]>([:])
    private let webhooksWakeUp: WorkerWakeUp

    /// After an upstream refused a task's call (breaker open, bulkhead full), the task waits this long.
    static let unavailableDelay: Duration = .seconds(1)

    /// - Parameters:
    ///   - wakeUp: Woken when a task is accepted on this instance.
    ///   - webhooksWakeUp: Woken when a task finished here made a webhook message.
    init(
        runtime: GatewayRuntime, instance: String, wakeUp: WorkerWakeUp, webhooksWakeUp: WorkerWakeUp, clock: @escaping EpochClock,
        drainTimeout: Duration, censusInterval: Duration, group: any EventLoopGroup
    ) {
        self.webhooksWakeUp = webhooksWakeUp
        self.censusInterval = censusInterval
        self.runtime = runtime
        self.instance = instance
        self.clock = clock
        self.drainTimeout = drainTimeout
        self.eventLoops = group
        self.poller = StorePoller(wakeUp: wakeUp)
    }

    func run() async throws {
        var lastRenewal = ContinuousClock.now
        var lastCensus: ContinuousClock.Instant?
        var trouble = FailureStreak("task workers", logger: runtime.logger, metrics: runtime.metrics)
        await poller.run(
            capacity: { runtime.snapshots.load().policy.gateway.tasks.workers },
            eachRound: {
                let snapshot = runtime.snapshots.load()
                let settings = snapshot.policy.gateway.tasks
                // Policies without async routes make no tasks: the queue is left alone.
                if Self.hasAsyncRoutes(snapshot), lastCensus.map({ ContinuousClock.now - $0 >= censusInterval }) ?? true {
                    lastCensus = .now
                    if let census = await trouble.attempt("task census", { try await snapshot.tasks.store.taskCensus(retention: settings.retention) }) {
                        runtime.metrics.taskCensus(census, now: clock())
                    }
                }
                if ContinuousClock.now - lastRenewal >= settings.lease / 3 {
                    lastRenewal = .now
                    await renew(store: snapshot.tasks.store, &trouble)
                }
            },
            take: { limit in
                let snapshot = runtime.snapshots.load()
                guard Self.hasAsyncRoutes(snapshot) else { return nil }
                let settings = snapshot.policy.gateway.tasks
                let claims = await trouble.attempt("take tasks") {
                    try await snapshot.tasks.store.takeTasks(consumer: instance, limit: limit, lease: settings.lease)
                }
                for claim in claims ?? [] { running.withLock { $0[claim] = .some(nil) } }
                return claims
            },
            work: { claim in
                let snapshot = self.runtime.snapshots.load()
                await self.work(claim, store: snapshot.tasks.store, snapshot: snapshot)
            },
            atShutdown: { await drain(&trouble) }
        )
    }

    private static func hasAsyncRoutes(_ snapshot: GatewaySnapshot) -> Bool {
        snapshot.policy.routes.routes.contains { $0.async != .never }
    }

    /// Renews the leases of every running task; a run whose lease was taken over is cancelled.
    private func renew(store: any SharedStore, _ trouble: inout FailureStreak) async {
        let held = running.withLock { Array($0.keys) }
        guard !held.isEmpty, let kept = await trouble.attempt("renew task leases", { try await store.renewTasks(held, consumer: instance) }) else { return }
        let lost = Set(held).subtracting(kept)
        for claim in lost {
            runtime.logger.warning("task lease lost; another instance runs it now", metadata: ["task": .string(claim.task.text)])
            running.withLock { $0[claim] ?? nil }?.cancel()
        }
    }

    /// Lets running tasks finish until the drain deadline, then cancels the rest and hands them back.
    private func drain(_ trouble: inout FailureStreak) async {
        let deadline = ContinuousClock.now + drainTimeout
        let store = runtime.snapshots.load().tasks.store
        while running.withLock({ !$0.isEmpty }), ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
            // Keep the leases of tasks that are still finishing.
            if running.withLock({ !$0.isEmpty }) { await renew(store: store, &trouble) }
        }
        for exchange in running.withLock({ $0.values.compactMap { $0 } }) { exchange.cancel() }
    }

    /// Runs one taken entry to its end: a task that is gone, finished or cancelled is only
    /// removed from the queue; otherwise it is marked running, called, and its result recorded.
    private func work(_ claim: TaskClaim, store: any SharedStore, snapshot: GatewaySnapshot) async {
        defer { running.withLock { _ = $0.removeValue(forKey: claim) } }
        let retention = snapshot.policy.gateway.tasks.retention
        let logger = runtime.logger
        do {
            guard let found = try await store.task(claim.task, .status) else { return try await store.completeEntry(claim) }
            var started = found
            switch started.lifecycle.start(at: clock(), instance: instance, maxLostRuns: snapshot.policy.gateway.tasks.maxAttempts) {
            case .run:
                break
            case .skip:
                return try await store.completeEntry(claim)
            case .giveUp:
                return try await recordGivingUp(started, from: found.revision, claim: claim, store: store)
            }
            guard try await store.replaceTask(started, from: found.revision, retention: retention) else {
                return  // moved meanwhile (a cancel, another worker): that change decides
            }
            if found.lifecycle.status == .queued {
                runtime.metrics.taskPhaseEnded(route: found.route, phase: .queued, milliseconds: started.lifecycle.updatedAt - found.lifecycle.updatedAt)
            }
            guard let request = try await store.taskRequest(claim.task) else {
                return try await finish(started, result: nil, failure: "the task's request is no longer stored", claim: claim, store: store)
            }
            guard let upstream = runtime.snapshots.load().upstreams[request.upstream] else {
                return try await finish(started, result: nil, failure: "upstream '\(request.upstream)' is no longer configured", claim: claim, store: store)
            }
            runtime.logger.info("task running", metadata: Self.metadata(started))
            let span = runtime.tracing.start("task \(started.route)", kind: .consumer, traceparent: started.traceparent)
            span?.attributes["sluice.task_id"] = started.id.text
            span?.attributes["sluice.partner"] = started.partner
            span?.attributes["http.route"] = started.route
            let exchange = TaskExchange.start(
                request, partner: started.partner, upstream: upstream, traceparent: span.flatMap(runtime.tracing.traceparent(of:)), on: eventLoops.next(), logger: logger
            )
            running.withLock { $0[claim] = exchange }
            let outcome = await exchange.outcome
            if let canary = runtime.snapshots.load().rules.routes[started.route]?.canary, canary.upstream.name == request.upstream {
                switch outcome {
                case .response(let result): runtime.canaryCallEnded(canary, route: started.route, failed: result.status >= 500)
                case .failed(.unavailable), .cancelled: break
                case .failed, .broken: runtime.canaryCallEnded(canary, route: started.route, failed: true)
                }
            }
            switch outcome {
            case .response(let result): span?.end(status: result.status)
            case .failed(let failure): span?.end(status: nil, failure: Self.describe(failure))
            case .broken(let reason): span?.end(status: nil, failure: reason)
            case .cancelled: span?.end(status: nil, failure: "cancelled at this instance (lease lost or shutdown)")
            }
            switch outcome {
            case .response(let result):
                try await finish(started, result: result, failure: result.status >= 500 ? "the upstream answered \(result.status)" : nil, claim: claim, store: store)
            case .failed(.unavailable):
                // An open breaker or a full bulkhead delays a task; it does not fail it.
                var queued = started
                guard queued.lifecycle.handBack(at: clock(), instance: instance, note: "upstream unavailable; queued again") else { return }
                if try await store.replaceTask(queued, from: started.revision, retention: retention) {
                    runtime.logger.info("task queued again (upstream unavailable)", metadata: Self.metadata(queued))
                    try? await Task.sleep(for: Self.unavailableDelay)
                    try await store.requeue(claim, consumer: instance)
                }
            case .failed(let failure):
                try await finish(started, result: nil, failure: Self.describe(failure), claim: claim, store: store)
            case .broken(let reason):
                try await finish(started, result: nil, failure: reason, claim: claim, store: store)
            case .cancelled:
                try await handBack(started, claim: claim, store: store, retention: retention)
            }
        } catch {
            logger.warning(
                "task store unavailable; the task is retried when its lease ends",
                metadata: ["task": .string(claim.task.text), "error": .string("\(error)")]
            )
        }
    }

    /// Records the end of a run (with its webhook event when the partner has a webhook) and
    /// removes the entry from the queue. A run that no longer counts (taken over) records nothing.
    private func finish(_ started: TaskRecord, result: TaskResult?, failure: String?, claim: TaskClaim, store: any SharedStore) async throws {
        let snapshot = runtime.snapshots.load()
        var finished = started
        let now = clock()
        guard finished.lifecycle.finish(succeeded: failure == nil, at: now, instance: instance, note: failure) else { return }
        finished.result = result
        finished.failure = failure
        let notify = snapshot.rules.partners[finished.partner]?.policy.webhook != nil ? WebhookMessage(finished: finished, at: now) : nil
        if try await store.replaceTask(finished, from: started.revision, retention: snapshot.policy.gateway.tasks.retention, notify: notify) {
            if notify != nil { webhooksWakeUp.wake() }
            runtime.metrics.taskPhaseEnded(route: finished.route, phase: .running, milliseconds: now - started.lifecycle.updatedAt)
            try await store.completeEntry(claim)
            runtime.logger.info("task \(finished.lifecycle.status.rawValue)", metadata: Self.metadata(finished))
        }
    }

    /// A task that lost `tasks.max_attempts` runs: recorded `failed` with the reason (and its
    /// webhook event), and removed from the queue.
    private func recordGivingUp(_ failed: TaskRecord, from revision: Int, claim: TaskClaim, store: any SharedStore) async throws {
        let snapshot = runtime.snapshots.load()
        var failed = failed
        failed.failure = failed.lifecycle.history.last?.note
        let notify = snapshot.rules.partners[failed.partner]?.policy.webhook != nil ? WebhookMessage(finished: failed, at: failed.lifecycle.updatedAt) : nil
        guard try await store.replaceTask(failed, from: revision, retention: snapshot.policy.gateway.tasks.retention, notify: notify) else { return }
        if notify != nil { webhooksWakeUp.wake() }
        try await store.completeEntry(claim)
        runtime.logger.warning("task failed: too many runs lost", metadata: Self.metadata(failed).merging(["error": .string(failed.failure ?? "")]) { $1 })
    }

    /// A run cut short here (shutdown, lost lease): queued again for another worker, unless another one already owns it.
    private func handBack(_ started: TaskRecord, claim: TaskClaim, store: any SharedStore, retention: Duration) async throws {
        var queued = started
        guard queued.lifecycle.handBack(at: clock(), instance: instance),
            try await store.replaceTask(queued, from: started.revision, retention: retention)
        else { return }
        runtime.logger.info("task queued again (handed back at shutdown)", metadata: Self.metadata(queued))
        try await store.requeue(claim, consumer: instance)
    }

    /// What task event lines carry.
    static func metadata(_ task: TaskRecord) -> Logger.Metadata {
        var metadata: Logger.Metadata = [
            "task": .string(task.id.text), "request_id": .string(task.lifecycle.requestID), "partner": .string(task.partner), "route": .string(task.route),
        ]
        if let traceparent = task.traceparent, let trace = RequestIdentity.traceID(of: traceparent) { metadata["trace_id"] = .string(String(trace)) }
        return metadata
    }

    static func describe(_ failure: UpstreamFailure) -> String {
        switch failure {
        case .timeout: "the upstream did not answer within the route's timeout"
        case .unreachable: "the upstream could not be reached or closed the connection"
        case .unavailable: "the upstream was unavailable"
        }
    }
}
