/// Reads the secret a caller presents.
public enum Credentials {
    /// `Authorization: Bearer SECRET` (scheme in any case), else `X-API-Key: SECRET`: the values
    /// of those two headers as the request carried them.
    public static func presented(authorization: String?, apiKey: String?) -> Substring? {
        if let authorization {
            let parts = authorization.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
            if parts.count == 2, parts[0].utf8.count == 6, parts[0].lowercased() == "bearer" {
                let secret = parts[1].trimmingASCIISpaces()
                return secret.isEmpty ? nil : secret
            }
        }
        if let apiKey, !apiKey.isEmpty { return Substring(apiKey) }
        return nil
    }
}

/// Comparisons of secrets whose time says nothing about where two values differ.
public enum ConstantTime {
    /// Whether `a` and `b` hold the same bytes. Unequal lengths answer at once (a key's length
    /// is no secret: every key has the same); otherwise every byte of both is read, whatever
    /// they hold.
    public static func equals<A: Sequence<UInt8>, B: Sequence<UInt8>>(_ a: A, count: Int, _ b: B, count other: Int) -> Bool {
        guard count == other else { return false }
        var difference: UInt8 = 0
        for (x, y) in zip(a, b) { difference |= x ^ y }
        return difference == 0
    }

    /// `equals` for two strings' UTF-8 bytes.
    public static func equals(_ a: some StringProtocol, _ b: some StringProtocol) -> Bool {
        equals(a.utf8, count: a.utf8.count, b.utf8, count: b.utf8.count)
    }
}
