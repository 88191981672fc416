import Synchronization
import Testing

/// What the senders of a failover or reshard test share.
final class AcceptLoad: Sendable {
    let accepted = Mutex<[String]>([])
    let refused = Atomic<Int>(0)
    let sending = Atomic<Bool>(true)
    /// Requests answered, and the statuses of those that were not what the test expects.
    let answered = Atomic<Int>(0)
    let unexpected = Mutex<[Int]>([])

    /// Three senders accept short tasks through `gateway` while `during` runs (a 202 records
    /// the task id; anything else must be 503 with `Retry-After`, and the sender backs off
    /// 50 ms); they stop when it returns.
    func acceptTasks(through gateway: GatewayHarness, during: () async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { senders in
            for _ in 0..<3 {
                senders.addTask {
                    while self.sending.load(ordering: .relaxed) {
                        let answer = try await gateway.acceptTask("/v2/price-calculations?ms=1")
                        if answer.status == 202, let id = try answer.json()["task_id"] as? String {
                            self.accepted.withLock { $0.append(id) }
                        } else {
                            #expect(answer.status == 503 && answer.header("Retry-After") != nil, "\(answer.status)")
                            self.refused.add(1, ordering: .relaxed)
                            try await Task.sleep(for: .milliseconds(50))
                        }
                    }
                }
            }
            do {
                try await during()
            } catch {
                sending.store(false, ordering: .relaxed)
                throw error
            }
            sending.store(false, ordering: .relaxed)
            try await senders.waitForAll()
        }
    }
}
