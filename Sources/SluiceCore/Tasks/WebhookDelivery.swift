/// One webhook event's way to the partner (Standard Webhooks retry rules, SPEC §3): attempts on
/// `webhooks.schedule` with jitter, a later `Retry-After` honoured, 410 disabling the endpoint,
/// the dead-letter queue after the last attempt. A value: the sender performs the actions.
public struct WebhookDelivery: Sendable, Equatable {
    /// How an attempt went.
    public enum Outcome: Sendable, Equatable {
        /// 2xx.
        case delivered
        /// 410 Gone: the receiver asks to stop.
        case gone
        /// Any other answer (3xx included: redirects are not followed) or an error; the
        /// receiver's `Retry-After`, if any.
        case failed(reason: String, retryAfter: Duration?)
        /// The address is not one a webhook may go to (`ReceiverAddressRule`): no retry helps.
        case refused(reason: String)
    }

    /// What the sender does next.
    public enum Action: Sendable, Equatable {
        case done
        /// Disable the partner's endpoint until the policies change; hold this delivery.
        case disableEndpoint
        case retry(after: Duration)
        case deadLetter(lastError: String)
    }

    /// Delays before each retry (`webhooks.schedule`).
    public let schedule: [Duration]
    /// Attempts made so far.
    public private(set) var attempts: Int
    /// The last failure, kept for the dead-letter queue.
    public private(set) var lastError: String?

    public init(schedule: [Duration], attempts: Int = 0, lastError: String? = nil) {
        self.schedule = schedule
        self.attempts = attempts
        self.lastError = lastError
    }

    /// Records an attempt's outcome. A retry waits the schedule's next delay, randomly
    /// stretched by up to a fifth (jitter, so a burst of failures does not come back at once),
    /// or the receiver's `Retry-After` when that is later — capped at the schedule's longest
    /// delay, so a receiver cannot park a delivery for ever.
    public mutating func attempted(_ outcome: Outcome, using random: inout some RandomNumberGenerator) -> Action {
        attempts += 1
        switch outcome {
        case .delivered:
            lastError = nil
            return .done
        case .gone:
            lastError = "410 Gone: the receiver disabled its endpoint"
            return .disableEndpoint
        case .refused(let reason):
            lastError = reason
            return .deadLetter(lastError: reason)
        case .failed(let reason, let retryAfter):
            lastError = reason
            guard attempts <= schedule.count else { return .deadLetter(lastError: reason) }
            let delay = schedule[attempts - 1]
            let jittered = delay + delay * Double.random(in: 0..<0.2, using: &random)
            guard let retryAfter, retryAfter > jittered else { return .retry(after: jittered) }
            return .retry(after: max(jittered, min(retryAfter, schedule.max() ?? retryAfter)))
        }
    }

    /// Starts the schedule again (a redrive from the dead-letter queue, or an endpoint enabled again).
    public mutating func redrive() {
        attempts = 0
        lastError = nil
    }
}
