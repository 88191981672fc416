/// Which addresses a webhook may be delivered to (SPEC §3, SSRF guard): only public unicast
/// ones, unless the partner allows private addresses (an on-premise receiver). The check is on
/// the address that is actually dialled, after resolution, so a name that resolves to a
/// private address (or is re-pointed between a check and the connect) is refused too.
public enum ReceiverAddressRule {
    /// Why an address is refused.
    public enum Refusal: String, Sendable, Equatable, CustomStringConvertible {
        case unspecified, loopback, privateNetwork = "private", sharedAddressSpace = "shared address space (CGNAT)"
        case linkLocal = "link-local", uniqueLocal = "unique-local", siteLocal = "site-local", multicast, broadcast
        case documentation, benchmarking, reserved

        public var description: String { rawValue }
    }

    /// Nil when a webhook may go to the address (4 or 16 bytes, network order), else why not.
    /// IPv4-mapped, IPv4-compatible, NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) forms are
    /// judged by the IPv4 address they carry.
    public static func refusal(address bytes: [UInt8]) -> Refusal? {
        switch bytes.count {
        case 4: refusal(ipv4: (bytes[0], bytes[1], bytes[2], bytes[3]))
        case 16: refusal(ipv6: bytes)
        default: .reserved
        }
    }

    /// Parses an address literal (`203.0.113.7`, `2001:db8::1`) into its bytes; nil when it is not one.
    public static func bytes(of literal: some StringProtocol) -> [UInt8]? {
        if literal.contains(":") { return ipv6(literal) }
        return ipv4(literal)
    }

    private static func refusal(ipv4 a: (UInt8, UInt8, UInt8, UInt8)) -> Refusal? {
        switch (a.0, a.1, a.2) {
        case (0, _, _): return .unspecified
        case (10, _, _): return .privateNetwork
        case (100, 64...127, _): return .sharedAddressSpace
        case (127, _, _): return .loopback
        case (169, 254, _): return .linkLocal
        case (172, 16...31, _): return .privateNetwork
        case (192, 0, 0): return .reserved
        case (192, 0, 2), (198, 51, 100), (203, 0, 113): return .documentation
        case (192, 88, 99): return .reserved
        case (192, 168, _): return .privateNetwork
        case (198, 18...19, _): return .benchmarking
        case (224...239, _, _): return .multicast
        case (255, 255, 255) where a.3 == 255: return .broadcast
        case (240...255, _, _): return .reserved
        default: return nil
        }
    }

    private static func refusal(ipv6 b: [UInt8]) -> Refusal? {
        let first10Zero = b[0..<10].allSatisfy { $0 == 0 }
        if first10Zero && b[10] == 0xff && b[11] == 0xff { return refusal(ipv4: (b[12], b[13], b[14], b[15])) }  // ::ffff:a.b.c.d
        if b[0..<12].allSatisfy({ $0 == 0 }) {
            if b[12..<15].allSatisfy({ $0 == 0 }) && b[15] <= 1 { return b[15] == 0 ? .unspecified : .loopback }
            return refusal(ipv4: (b[12], b[13], b[14], b[15]))  // ::a.b.c.d (IPv4-compatible, deprecated)
        }
        if b[0..<12] == [0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0] { return refusal(ipv4: (b[12], b[13], b[14], b[15])) }  // NAT64
        if b[0..<6] == [0x00, 0x64, 0xff, 0x9b, 0x00, 0x01] { return .privateNetwork }  // 64:ff9b:1::/48, local-use NAT64
        if b[0] == 0x20 && b[1] == 0x02 { return refusal(ipv4: (b[2], b[3], b[4], b[5])) }  // 6to4
        if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8 { return .documentation }  // 2001:db8::/32
        if b[0] == 0x20 && b[1] == 0x01 && b[2] < 0x02 { return .reserved }  // 2001::/23: Teredo, ORCHID, benchmarking…
        if b[0] == 0x01 && b[1] == 0x00 && b[2..<8].allSatisfy({ $0 == 0 }) { return .reserved }  // 100::/64, discard-only
        if b[0] & 0xfe == 0xfc { return .uniqueLocal }  // fc00::/7
        if b[0] == 0xfe && b[1] & 0xc0 == 0x80 { return .linkLocal }  // fe80::/10
        if b[0] == 0xfe && b[1] & 0xc0 == 0xc0 { return .siteLocal }  // fec0::/10
        if b[0] == 0xff { return .multicast }
        // Only 2000::/3 is global unicast; the rest is unassigned.
        if b[0] & 0xe0 != 0x20 { return .reserved }
        return nil
    }

    private static func ipv4(_ text: some StringProtocol) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy(\.isASCII), let value = UInt8(part),
                part.count == 1 || part.first != "0"
            else { return nil }
            bytes.append(value)
        }
        return bytes
    }

    private static func ipv6(_ text: some StringProtocol) -> [UInt8]? {
        let halves = text.split(separator: "::", maxSplits: 1, omittingEmptySubsequences: false).map { String($0) }
        guard halves.count <= 2, !text.contains(":::") else { return nil }
        func groups(_ part: String) -> [UInt8]? {
            guard !part.isEmpty else { return [] }
            var bytes: [UInt8] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, piece) in pieces.enumerated() {
                if index == pieces.count - 1, piece.contains(".") {
                    guard let v4 = ipv4(piece) else { return nil }
                    bytes += v4
                } else {
                    guard (1...4).contains(piece.count), let value = UInt16(piece, radix: 16) else { return nil }
                    bytes += [UInt8(value >> 8), UInt8(value & 0xff)]
                }
            }
            return bytes
        }
        guard let head = groups(halves[0]) else { return nil }
        if halves.count == 1 { return head.count == 16 ? head : nil }
        guard let tail = groups(halves[1]), head.count + tail.count <= 14 else { return nil }
        return head + Array(repeating: 0, count: 16 - head.count - tail.count) + tail
    }
}
