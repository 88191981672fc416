import Foundation
import Logging
import ServiceLifecycle
import SluiceCore
import SluiceStore
import Synchronization

/// Delivers webhook events (SPEC §3 Webhooks). Every instance runs one: it takes the messages
/// that are due from the store (each held for a lease while this instance tries it, so one
/// instance sends it at a time), signs each attempt afresh, and follows `WebhookDelivery`:
/// delivered messages are dropped, failures rescheduled on `webhooks.schedule`, the last
/// failure or a refused address buried in the dead-letter queue. A 410 disables the partner's
/// endpoint on this instance until the policies change; its messages are held meanwhile.
final class WebhookSender: Service, Sendable {
    private let runtime: GatewayRuntime
    private let client: WebhookClient
    private let clock: EpochClock
    private let wakeUp: WorkerWakeUp
    private let poller: StorePoller<WebhookMessage>
    /// Set when this instance buried a message, so `sluice_webhooks_dead` is refreshed at once.
    private let buried = Atomic<Bool>(false)
    /// Partners whose endpoint answered 410, with the policy version it answered under.
    private let disabled = Mutex<[String: String]>([:])

    /// Attempts one instance makes at once.
    static let concurrentAttempts = 16
    /// When a held message (its endpoint disabled by a 410) is looked at again: the schedule's first delay.
    private static func heldDelay(_ schedule: [Duration]) -> Duration { schedule.first ?? .seconds(5) }
    /// How often `sluice_webhooks_dead` is refreshed from the store.
    private let deadCountInterval: Duration

    /// - Parameter wakeUp: Woken when this instance makes a message (a task finished here).
    init(runtime: GatewayRuntime, client: WebhookClient, clock: @escaping EpochClock, deadCountInterval: Duration, wakeUp: WorkerWakeUp) {
        self.runtime = runtime
        self.wakeUp = wakeUp
        self.poller = StorePoller(wakeUp: wakeUp)
        self.deadCountInterval = deadCountInterval
        self.client = client
        self.clock = clock
    }

    func run() async throws {
        var lastDeadCount: ContinuousClock.Instant?
        var trouble = FailureStreak("webhook sender", logger: runtime.logger, metrics: runtime.metrics)
        await poller.run(
            capacity: { Self.concurrentAttempts },
            eachRound: {
                let snapshot = runtime.snapshots.load()
                guard Self.hasWebhooks(snapshot) else { return }
                let countDue = lastDeadCount.map { ContinuousClock.now - $0 >= deadCountInterval } ?? true
                guard buried.exchange(false, ordering: .relaxed) || countDue else { return }
                lastDeadCount = .now
                if let count = await trouble.attempt("count dead webhooks", { try await snapshot.tasks.store.deadWebhookCount(retention: snapshot.policy.gateway.tasks.retention) }) {
                    runtime.metrics.webhooksDead(count)
                }
            },
            take: { limit in
                let snapshot = runtime.snapshots.load()
                // Without partner webhooks no messages are made: the store is left alone.
                guard Self.hasWebhooks(snapshot) else { return nil }
                // The lease outlasts an attempt, so nobody else sends it meanwhile.
                let lease = snapshot.policy.gateway.webhooks.timeout * 2 + .seconds(5)
                return await trouble.attempt("take due webhooks") { try await snapshot.tasks.store.takeDueWebhooks(limit: limit, lease: lease) }
            },
            work: { message in await self.attempt(message, store: self.runtime.snapshots.load().tasks.store) }
        )
    }

    private static func hasWebhooks(_ snapshot: GatewaySnapshot) -> Bool {
        snapshot.policy.partners.contains { $0.webhook != nil }
    }

    /// One attempt of `message` and what follows from its outcome.
    private func attempt(_ message: WebhookMessage, store: any SharedStore) async {
        let snapshot = runtime.snapshots.load()
        let retention = snapshot.policy.gateway.tasks.retention
        let schedule = snapshot.policy.gateway.webhooks.schedule
        var message = message
        var metadata: Logger.Metadata = [
            "webhook_id": .string(message.id), "task": .string(message.task.text), "partner": .string(message.partner),
        ]
        do {
            guard let endpoint = snapshot.rules.partners[message.partner]?.policy.webhook else {
                message.lastError = "partner '\(message.partner)' has no webhook endpoint in the policies"
                runtime.logger.warning("webhook dead: no endpoint", metadata: metadata)
                runtime.metrics.webhookAttempted(.refused)
                try await store.buryWebhook(message, retention: retention)
                return buried.store(true, ordering: .relaxed)
            }
            let version = snapshot.policy.versionHash
            if disabled.withLock({ $0[message.partner] }) == version {
                runtime.metrics.webhookAttempted(.held)
                return try await store.rescheduleWebhook(message, after: Self.heldDelay(schedule), retention: retention)
            }
            let span = runtime.tracing.start("webhook \(message.type)", kind: .producer, traceparent: message.traceparent)
            span?.attributes["sluice.webhook_id"] = message.id
            span?.attributes["sluice.partner"] = message.partner
            let traceparent = span.flatMap(runtime.tracing.traceparent(of:)) ?? message.traceparent
            let outcome = await client.send(
                signedAttempt(message, endpoint: endpoint, timeout: snapshot.policy.gateway.webhooks.timeout, traceparent: traceparent)
            )
            switch outcome {
            case .delivered: span?.end(status: nil)
            case .gone: span?.end(status: 410, failure: "the endpoint answered 410")
            case .failed(let reason, _): span?.end(status: nil, failure: reason)
            case .refused(let reason): span?.end(status: nil, failure: reason)
            }
            var delivery = WebhookDelivery(schedule: schedule, attempts: message.attempts, lastError: message.lastError)
            var random = SystemRandomNumberGenerator()
            let action = delivery.attempted(outcome, using: &random)
            message.attempts = delivery.attempts
            message.lastError = delivery.lastError
            metadata["attempt"] = .stringConvertible(message.attempts)
            if let error = delivery.lastError { metadata["error"] = .string(error) }
            switch action {
            case .done:
                runtime.metrics.webhookAttempted(.delivered)
                runtime.logger.info("webhook delivered", metadata: metadata)
                try await store.webhookDelivered(message)
            case .retry(let delay):
                runtime.metrics.webhookAttempted(.failed)
                metadata["retry_in_ms"] = .stringConvertible(delay.milliseconds)
                runtime.logger.notice("webhook attempt failed; retrying", metadata: metadata)
                try await store.rescheduleWebhook(message, after: delay, retention: retention)
                wakeUp.wake(after: delay)
            case .disableEndpoint:
                disabled.withLock { $0[message.partner] = version }
                runtime.metrics.webhookAttempted(.gone)
                runtime.logger.warning("webhook endpoint answered 410; disabled until the policies change, deliveries held", metadata: metadata)
                try await store.rescheduleWebhook(message, after: Self.heldDelay(schedule), retention: retention)
            case .deadLetter:
                runtime.metrics.webhookAttempted(outcome.isRefusal ? .refused : .failed)
                runtime.logger.warning("webhook dead", metadata: metadata)
                try await store.buryWebhook(message, retention: retention)
                buried.store(true, ordering: .relaxed)
            }
        } catch {
            metadata["error"] = .string("\(error)")
            runtime.logger.warning("webhook store unavailable; the message is tried again when its lease ends", metadata: metadata)
        }
    }

    /// The attempt's request, signed now: a fresh timestamp and signature, the same `webhook-id`.
    private func signedAttempt(
        _ message: WebhookMessage, endpoint: PartnerPolicy.Webhook, timeout: Duration, traceparent: String?
    ) -> WebhookClient.Attempt {
        let timestamp = clock() / 1_000
        var headers = [
            ("webhook-id", message.id),
            ("webhook-timestamp", String(timestamp)),
            ("webhook-signature", WebhookSignature.sign(id: message.id, timestamp: timestamp, body: message.payload, secret: endpoint.secret)),
        ]
        if let traceparent { headers.append(("traceparent", traceparent)) }
        return WebhookClient.Attempt(
            url: endpoint.url, allowPrivateAddresses: endpoint.allowPrivateAddresses, headers: headers, body: message.payload, timeout: timeout
        )
    }
}

extension WebhookDelivery.Outcome {
    fileprivate var isRefusal: Bool {
        if case .refused = self { return true }
        return false
    }
}
