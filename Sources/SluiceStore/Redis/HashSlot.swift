/// Redis Cluster's key → hash slot mapping: CRC16 (XMODEM) of the key's hash tag — the part
/// between the first `{` and the next `}` when that is not empty — or of the whole key, modulo 16384.
enum HashSlot {
    static let count = 16_384

    /// The slot of `key`.
    static func of(_ key: String) -> Int {
        var key = key
        return key.withUTF8 { of(bytes: $0) }
    }

    static func of(bytes: UnsafeBufferPointer<UInt8>) -> Int {
        var tagged = bytes[...]
        if let open = bytes.firstIndex(of: UInt8(ascii: "{")),
            let close = bytes[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1
        {
            tagged = bytes[(open + 1)..<close]
        }
        var crc: UInt16 = 0
        for byte in tagged {
            crc = (crc << 8) ^ table[Int((crc >> 8) ^ UInt16(byte)) & 0xFF]
        }
        return Int(crc) & (count - 1)
    }

    /// CRC16-CCITT (polynomial 0x1021), one entry per byte value.
    private static let table: [UInt16] = (0..<256).map { value in
        var crc = UInt16(value) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }
}
