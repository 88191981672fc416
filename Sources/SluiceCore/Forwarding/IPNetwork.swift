/// An IP address as 128 bits; IPv4 addresses are kept in their IPv4-mapped IPv6 form
/// (`::ffff:a.b.c.d`), so one comparison serves both families and a dual-stack listener's
/// mapped peers match IPv4 networks.
public struct IPAddress: Sendable, Hashable {
    public let high: UInt64
    public let low: UInt64

    init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Parses a literal (`203.0.113.7`, `2001:db8::1`, `::ffff:10.0.0.1`); nil when it is not one.
    public init?(_ literal: some StringProtocol) {
        guard let bytes = ReceiverAddressRule.bytes(of: literal) else { return nil }
        self.init(bytes: bytes)
    }

    /// 4 or 16 bytes in network order.
    public init?(bytes: [UInt8]) {
        let full: [UInt8]
        switch bytes.count {
        case 4: full = Array(repeating: 0, count: 10) + [0xff, 0xff] + bytes
        case 16: full = bytes
        default: return nil
        }
        high = full[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
        low = full[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Whether this is an IPv4 address (mapped).
    var isIPv4: Bool { high == 0 && low >> 32 == 0xffff }
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is one host), as
/// `listen.trusted_proxies` lists them.
public struct IPNetwork: Sendable, Hashable, CustomStringConvertible {
    private let network: IPAddress
    private let mask: IPAddress
    public let description: String

    /// Parses `ADDRESS[/PREFIX]`; nil when it is not one (an IPv4 prefix is 0-32, IPv6 0-128).
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(parts[0]) else { return nil }
        let family = address.isIPv4 && !parts[0].contains(":") ? 32 : 128
        var prefix = family
        if parts.count == 2 {
            guard let value = Int(parts[1]), (0...family).contains(value), parts[1].allSatisfy(\.isASCII) else { return nil }
            prefix = value
        }
        // An IPv4 prefix counts within the mapped form's last 32 bits.
        let bits = family == 32 ? 96 + prefix : prefix
        let maskHigh: UInt64 = bits >= 64 ? .max : (bits == 0 ? 0 : .max << (64 - bits))
        let maskLow: UInt64 = bits <= 64 ? 0 : (bits == 128 ? .max : .max << (128 - bits))
        mask = IPAddress(high: maskHigh, low: maskLow)
        network = IPAddress(high: address.high & maskHigh, low: address.low & maskLow)
        description = text
    }

    public func contains(_ address: IPAddress) -> Bool {
        address.high & mask.high == network.high && address.low & mask.low == network.low
    }
}
