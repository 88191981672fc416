/// Where a task is (SPEC §3): `queued → running → succeeded | failed | cancelled`.
public enum TaskStatus: String, Sendable, Equatable, CaseIterable, Codable {
    case queued, running, succeeded, failed, cancelled

    /// Succeeded, failed or cancelled: nothing happens to the task any more.
    public var isFinished: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

/// One entry of a task's append-only history.
public struct TaskTransition: Sendable, Equatable, Codable {
    /// 1 for the first entry, one more for each next one.
    public var version: Int
    public var status: TaskStatus
    /// Epoch milliseconds.
    public var at: Int64
    /// The gateway instance that made the transition.
    public var instance: String
    /// The `X-Request-Id` of the request that created the task (correlates every entry).
    public var requestID: String
    /// Why, where it is worth saying (a takeover, a hand-back, a failure).
    public var note: String?

    public init(version: Int, status: TaskStatus, at: Int64, instance: String, requestID: String, note: String? = nil) {
        self.version = version
        self.status = status
        self.at = at
        self.instance = instance
        self.requestID = requestID
        self.note = note
    }
}

/// A task's status and history as a value: each mutating method is one transition the stores
/// apply atomically (the Redis store in Lua, by the same rules) and answers what the caller
/// does next. Transitions that do not apply (a late result after a takeover, a cancel of a
/// running task) change nothing.
public struct TaskLifecycle: Sendable, Equatable, Codable {
    public private(set) var history: [TaskTransition]
    /// Runs started (a takeover of a dead worker's run starts another).
    public private(set) var attempts: Int
    /// The instance whose run counts (its result is taken; another's is late and ignored).
    public private(set) var runner: String?

    public var status: TaskStatus { history[history.count - 1].status }
    public var version: Int { history.count }
    public var createdAt: Int64 { history[0].at }
    public var updatedAt: Int64 { history[history.count - 1].at }
    public var requestID: String { history[0].requestID }

    /// A task accepted at `now` by `instance` for the request `requestID` (`note`: why, where
    /// it is worth saying, e.g. that it runs on a canary).
    public init(acceptedAt now: Int64, instance: String, requestID: String, note: String? = nil) {
        history = [TaskTransition(version: 1, status: .queued, at: now, instance: instance, requestID: requestID, note: note)]
        attempts = 0
    }

    /// What a worker that picked the task up does.
    public enum StartAction: Sendable, Equatable {
        /// Call the upstream.
        case run
        /// Nothing: the task was cancelled or finished meanwhile (acknowledge the queue entry).
        case skip
        /// Record the failure (the task is now `failed`: too many runs were lost) and send its webhook.
        case giveUp
    }

    /// Runs that ended without a result because another worker took them over (their
    /// instance died, or stalled past the lease): each is a `running` entry followed by another.
    public var lostRuns: Int {
        zip(history, history.dropFirst()).filter { $0.status == .running && $1.status == .running }.count
    }

    /// A worker of `instance` starts a run: from `queued`, or from `running` when the previous
    /// runner's lease expired (a takeover). Once `maxLostRuns` runs were lost that way, the task
    /// fails instead of running again (a task that kills or stalls every worker that runs it
    /// must not be taken over forever).
    public mutating func start(at now: Int64, instance: String, maxLostRuns: Int = .max) -> StartAction {
        switch status {
        case .queued:
            append(.running, at: now, instance: instance, note: nil)
        case .running where lostRuns + 1 >= maxLostRuns:
            let lost = lostRuns + 1
            append(.failed, at: now, instance: instance, note: Self.gaveUpNote(lost))
            runner = nil
            return .giveUp
        case .running:
            append(.running, at: now, instance: instance, note: "taken over from \(runner ?? "an unknown instance")")
        case .succeeded, .failed, .cancelled:
            return .skip
        }
        attempts += 1
        runner = instance
        return .run
    }

    /// Why a task that lost too many runs failed.
    public static func gaveUpNote(_ lost: Int) -> String {
        "gave up after \(lost) runs ended without a result (each was taken over after tasks.lease: its instance died or stalled)"
    }

    /// The run of `instance` ended; false (nothing changes) when that run no longer counts.
    public mutating func finish(succeeded: Bool, at now: Int64, instance: String, note: String? = nil) -> Bool {
        guard status == .running, runner == instance else { return false }
        append(succeeded ? .succeeded : .failed, at: now, instance: instance, note: note)
        runner = nil
        return true
    }

    /// A running task handed back to the queue by its instance (shutdown, or an upstream that
    /// cannot take calls now): another run follows.
    public mutating func handBack(at now: Int64, instance: String, note: String = "handed back at shutdown") -> Bool {
        guard status == .running, runner == instance else { return false }
        append(.queued, at: now, instance: instance, note: note)
        runner = nil
        return true
    }

    /// The answer to a partner's cancel.
    public enum CancelOutcome: Sendable, Equatable {
        /// Now cancelled; send the `task.cancelled` webhook.
        case cancelled
        /// Running or finished: 409.
        case conflict(TaskStatus)
    }

    /// Only a queued task can be cancelled (it then never reaches the upstream).
    public mutating func cancel(at now: Int64, instance: String) -> CancelOutcome {
        guard status == .queued else { return .conflict(status) }
        append(.cancelled, at: now, instance: instance, note: nil)
        return .cancelled
    }

    private enum CodingKeys: String, CodingKey {
        case history, attempts, runner
    }

    /// Decodes a stored lifecycle; a history that is empty or whose versions do not count up
    /// from 1 is refused (every accessor relies on it).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        history = try container.decode([TaskTransition].self, forKey: .history)
        attempts = try container.decode(Int.self, forKey: .attempts)
        runner = try container.decodeIfPresent(String.self, forKey: .runner)
        guard !history.isEmpty, history.enumerated().allSatisfy({ $0.element.version == $0.offset + 1 }) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "a task history must count up from version 1"))
        }
    }

    private mutating func append(_ status: TaskStatus, at now: Int64, instance: String, note: String?) {
        // Monotonic even if an instance's clock is behind the last entry's.
        let at = max(now, updatedAt)
        history.append(TaskTransition(version: history.count + 1, status: status, at: at, instance: instance, requestID: requestID, note: note))
    }
}
