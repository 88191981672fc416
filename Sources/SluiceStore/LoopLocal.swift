public import NIOCore

/// One value per event loop of a group, each only touched on its own loop, so using it on the
/// request path takes no lock: the Redis client's connections, the Redis store's per-loop
/// queues, the upstream connection pools, access-log buffers, usage tables, metric handles
/// and held leases all live in one of these. Values are made once, for the loops the group has.
public final class LoopLocal<Value>: @unchecked Sendable {
    private final class Box: @unchecked Sendable {
        var value: Value
        init(_ value: Value) { self.value = value }
    }

    /// The group's loops, in the group's order.
    public let eventLoops: [any EventLoop]
    private let boxes: [ObjectIdentifier: Box]

    public convenience init(group: any EventLoopGroup, initial: (any EventLoop) -> Value) {
        self.init(eventLoops: Array(group.makeIterator()), initial: initial)
    }

    public init(eventLoops: [any EventLoop], initial: (any EventLoop) -> Value) {
        self.eventLoops = eventLoops
        boxes = eventLoops.reduce(into: [:]) { $0[ObjectIdentifier($1)] = Box(initial($1)) }
    }

    /// `eventLoop`'s value; nil when the loop is not of the group. For a class value: the loop's
    /// object (use it on that loop); for a struct, a copy (change it with `update`).
    public subscript(_ eventLoop: any EventLoop) -> Value? {
        boxes[ObjectIdentifier(eventLoop)]?.value
    }

    /// Runs `body` on `eventLoop`'s value; call on `eventLoop`. Nil when the loop is not of the group.
    @discardableResult
    public func update<Result>(on eventLoop: any EventLoop, _ body: (inout Value) -> Result) -> Result? {
        guard let box = boxes[ObjectIdentifier(eventLoop)] else { return nil }
        return body(&box.value)
    }

    /// Runs `body` on every loop's value, on that loop, one loop after the other.
    public func collect<Result: Sendable>(_ body: @escaping @Sendable (inout Value) -> Result) async -> [Result] {
        var results: [Result] = []
        for eventLoop in eventLoops {
            guard let box = boxes[ObjectIdentifier(eventLoop)] else { continue }
            if let result = try? await eventLoop.submit({ body(&box.value) }).get() { results.append(result) }
        }
        return results
    }

    /// `collect` for callers that cannot wait asynchronously (blocks; never on an event loop).
    public func collectBlocking<Result: Sendable>(_ body: @escaping @Sendable (inout Value) -> Result) -> [Result] {
        var results: [Result] = []
        for eventLoop in eventLoops {
            guard let box = boxes[ObjectIdentifier(eventLoop)] else { continue }
            if let result = try? eventLoop.submit({ body(&box.value) }).wait() { results.append(result) }
        }
        return results
    }

    /// Runs `body` with each loop and its value, here (for class values whose own methods hop
    /// to their loop, such as closing connections at shutdown).
    public func forEach(_ body: (any EventLoop, Value) -> Void) {
        for eventLoop in eventLoops {
            if let box = boxes[ObjectIdentifier(eventLoop)] { body(eventLoop, box.value) }
        }
    }
}
