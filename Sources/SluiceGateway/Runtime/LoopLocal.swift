import NIOCore

/// One value per event loop of a group, each only touched on its own loop, so updating it on the
/// request path takes no lock; `collect` visits every loop in turn.
final class LoopLocal<Value>: @unchecked Sendable {
    private final class Box: @unchecked Sendable {
        var value: Value
        init(_ value: Value) { self.value = value }
    }

    private let eventLoops: [any EventLoop]
    private let boxes: [ObjectIdentifier: Box]

    init(group: any EventLoopGroup, initial: () -> Value) {
        eventLoops = Array(group.makeIterator())
        boxes = eventLoops.reduce(into: [:]) { $0[ObjectIdentifier($1)] = Box(initial()) }
    }

    /// Runs `body` on `eventLoop`'s value; call on `eventLoop`. Nil when the loop is not of the group.
    @discardableResult
    func update<Result>(on eventLoop: any EventLoop, _ body: (inout Value) -> Result) -> Result? {
        guard let box = boxes[ObjectIdentifier(eventLoop)] else { return nil }
        return body(&box.value)
    }

    /// Runs `body` on every loop's value, on that loop, one loop after the other.
    func collect<Result: Sendable>(_ body: @escaping @Sendable (inout Value) -> Result) async -> [Result] {
        var results: [Result] = []
        for eventLoop in eventLoops {
            guard let box = boxes[ObjectIdentifier(eventLoop)] else { continue }
            if let result = try? await eventLoop.submit({ body(&box.value) }).get() { results.append(result) }
        }
        return results
    }
}
