/// A set of target positions (0…63) in a pool, as a bit mask: what a call may use, what it
/// already tried. A pool has at most `TargetSet.capacity` targets.
public struct TargetSet: Sendable, Equatable, Sequence {
    public static let capacity = 64
    public var bits: UInt64

    public init(bits: UInt64 = 0) { self.bits = bits }

    /// The first `count` positions.
    public static func all(_ count: Int) -> TargetSet {
        TargetSet(bits: count >= 64 ? .max : (UInt64(1) << UInt64(count)) &- 1)
    }

    public var isEmpty: Bool { bits == 0 }
    public var count: Int { bits.nonzeroBitCount }
    public func contains(_ index: Int) -> Bool { bits & (UInt64(1) << UInt64(index)) != 0 }
    public mutating func insert(_ index: Int) { bits |= UInt64(1) << UInt64(index) }
    public mutating func remove(_ index: Int) { bits &= ~(UInt64(1) << UInt64(index)) }
    public func subtracting(_ other: TargetSet) -> TargetSet { TargetSet(bits: bits & ~other.bits) }

    public func makeIterator() -> Iterator { Iterator(bits: bits) }

    public struct Iterator: IteratorProtocol {
        var bits: UInt64
        public mutating func next() -> Int? {
            guard bits != 0 else { return nil }
            let index = bits.trailingZeroBitCount
            bits &= bits &- 1
            return index
        }
    }
}
