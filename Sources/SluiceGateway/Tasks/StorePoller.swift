import ServiceLifecycle
import Synchronization

/// The one shape of the background loops that take work from the store — the task workers and
/// the webhook sender: each round asks for as many items as there are free slots, runs each in
/// a child task, looks again at once while a full take suggests a backlog, doubles the wait
/// after an empty take up to `idlePollInterval`, and cuts the wait short when woken (work was
/// accepted on this instance). It stops taking at graceful shutdown.
final class StorePoller<Item: Sendable>: Sendable {
    /// How soon the store is asked again after it had work; each empty answer doubles the wait
    /// up to `idlePollInterval`.
    static var pollInterval: Duration { .milliseconds(250) }
    static var idlePollInterval: Duration { .seconds(1) }

    private let wakeUp: WorkerWakeUp
    private let running = Atomic<Int>(0)
    /// The last take filled every free slot: each finished item then looks again at once.
    private let backlog = Atomic<Bool>(false)

    init(wakeUp: WorkerWakeUp = WorkerWakeUp()) {
        self.wakeUp = wakeUp
    }

    /// Items running now.
    var inFlight: Int { running.load(ordering: .relaxed) }

    /// Runs rounds until graceful shutdown, then `atShutdown` (still inside the task group, so
    /// that it can wait for the running items and cut them short).
    /// - Parameters:
    ///   - capacity: How many items may run at once (read each round: the policies may change).
    ///   - eachRound: Periodic work besides taking (gauges, lease renewals).
    ///   - take: Up to `limit` items from the store; nil when there is nothing to ask (the
    ///     feature is not configured) or the store failed.
    ///   - work: Runs one item.
    func run(
        capacity: () -> Int, eachRound: () async -> Void, take: (_ limit: Int) async -> [Item]?,
        work: @escaping @Sendable (Item) async -> Void, atShutdown: () async -> Void = {}
    ) async {
        await withDiscardingTaskGroup { group in
            var wait = Self.pollInterval
            while !Task.isShuttingDownGracefully {
                await eachRound()
                let free = capacity() - running.load(ordering: .relaxed)
                if free > 0, let items = await take(free) {
                    backlog.store(items.count == free, ordering: .relaxed)
                    for item in items {
                        running.add(1, ordering: .relaxed)
                        group.addTask {
                            await work(item)
                            self.running.subtract(1, ordering: .relaxed)
                            if self.backlog.load(ordering: .relaxed) { self.wakeUp.wake() }
                        }
                    }
                    wait = items.isEmpty ? min(wait * 2, Self.idlePollInterval) : Self.pollInterval
                }
                if await wakeUp.pause(for: wait) { wait = Self.pollInterval }
            }
            await atShutdown()
        }
    }
}
