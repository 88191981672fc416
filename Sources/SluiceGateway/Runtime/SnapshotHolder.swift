import NIOPosix
import Synchronization

/// Holds the value every request reads (the policy snapshot) and swaps it atomically.
///
/// Reads take no lock: each thread keeps the snapshot it last saw together with its
/// generation, and only refreshes (under the lock) after a swap bumped the generation.
final class SnapshotHolder<Value: AnyObject & Sendable>: Sendable {
    /// Only ever touched by the thread that owns it.
    private final class CachedValue: @unchecked Sendable {
        var generation: UInt64
        var value: Value

        init(generation: UInt64, value: Value) {
            self.generation = generation
            self.value = value
        }
    }

    private let generation = Atomic<UInt64>(1)
    private let current: Mutex<(generation: UInt64, value: Value)>
    private let perThread = ThreadSpecificVariable<CachedValue>()

    init(_ value: Value) {
        current = Mutex((1, value))
    }

    /// The current value.
    func load() -> Value {
        let latest = generation.load(ordering: .acquiring)
        if let cached = perThread.currentValue {
            if cached.generation == latest { return cached.value }
            let (generation, value) = current.withLock { ($0.generation, $0.value) }
            cached.generation = generation
            cached.value = value
            return value
        }
        let (generation, value) = current.withLock { ($0.generation, $0.value) }
        perThread.currentValue = CachedValue(generation: generation, value: value)
        return value
    }

    /// Replaces the value for every later `load()`; returns the value it replaced.
    @discardableResult
    func store(_ value: Value) -> Value {
        update { _ in value }
    }

    /// Replaces the value with what `make` builds from it, one update at a time (a reload and a
    /// change of resolved targets cannot undo each other); returns the value it replaced.
    /// Readers are not held up: they take the lock only after a swap.
    @discardableResult
    func update<Failure: Error>(_ make: (Value) throws(Failure) -> Value) throws(Failure) -> Value {
        try current.withLock { state throws(Failure) in
            let previous = state.value
            state = (state.generation + 1, try make(previous))
            generation.store(state.generation, ordering: .releasing)
            return previous
        }
    }
}
