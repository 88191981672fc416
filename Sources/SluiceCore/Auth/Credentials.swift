public import HTTPTypes

/// Reads the secret a caller presents.
public enum Credentials {
    private static let apiKey = HTTPField.Name("X-API-Key")!

    /// `Authorization: Bearer SECRET` (scheme in any case), else `X-API-Key: SECRET`.
    public static func presented(in headers: HTTPFields) -> Substring? {
        if let authorization = headers[.authorization] {
            let parts = authorization.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
            if parts.count == 2, parts[0].lowercased() == "bearer" {
                let secret = parts[1].trimmingASCIISpaces()
                return secret.isEmpty ? nil : secret
            }
        }
        if let key = headers[apiKey], !key.isEmpty { return Substring(key) }
        return nil
    }
}
