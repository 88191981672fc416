/// 64-bit hashes every instance computes alike (FNV-1a over UTF-8, then the splitmix64
/// finaliser): Swift's `Hasher` is seeded per process, so it cannot place a partner the same
/// way on two gateways.
public enum StableHash {
    public static func of(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return mix(hash)
    }

    /// Combines two hashes into one that is well spread.
    public static func combine(_ a: UInt64, _ b: UInt64) -> UInt64 {
        mix(a ^ (b &+ 0x9e37_79b9_7f4a_7c15 &+ (a << 6) &+ (a >> 2)))
    }

    /// A hash as a number in (0, 1).
    public static func unitInterval(_ hash: UInt64) -> Double {
        (Double(hash >> 11) + 0.5) / Double(UInt64(1) << 53)
    }

    /// A bijection on UInt64 (the splitmix64 finalizer).
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// A small, fast random number generator (splitmix64) for balancing decisions: seeded, so
/// tests are repeatable; not for anything secret.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        return StableHash.mix(state)
    }
}
