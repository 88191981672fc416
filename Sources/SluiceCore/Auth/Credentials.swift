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
