import SluiceCore
import Testing
@testable import SluiceGateway

struct RequestChecksTests {
    /// A connection's cached key answers only for the very same key; another key, also one of
    /// the same length or a prefix of it, is looked up.
    @Test func keyCacheAnswersOnlyForTheSameKey() throws {
        let policy = try PolicyFixturesForGateway.policy()
        let rules = GatewayRules(policy)
        let cache = KeyCache()
        let key = PolicyFixturesForGateway.acmeKey
        #expect(cache.partner(forKey: Substring(key), rules: rules)?.id == "acme")
        #expect(cache.partner(forKey: Substring(key), rules: rules)?.id == "acme")
        var other = Array(key.utf8)
        other[other.count - 1] ^= 1
        #expect(cache.partner(forKey: Substring(String(decoding: other, as: UTF8.self)), rules: rules) == nil)
        #expect(cache.partner(forKey: Substring(key).dropLast(), rules: rules) == nil)
        #expect(cache.partner(forKey: Substring(key), rules: rules)?.id == "acme")
    }

    /// Keys come from a Bearer authorization (any case) or X-API-Key; other schemes are ignored.
    @Test func presentedKeys() {
        #expect(Credentials.presented(authorization: "Bearer sk_abc", apiKey: nil) == "sk_abc")
        #expect(Credentials.presented(authorization: "bearer   sk_abc ", apiKey: nil) == "sk_abc")
        #expect(Credentials.presented(authorization: "Basic dXNlcg==", apiKey: nil) == nil)
        #expect(Credentials.presented(authorization: nil, apiKey: "sk_xyz") == "sk_xyz")
        #expect(Credentials.presented(authorization: "Bearer ", apiKey: nil) == nil)
        #expect(Credentials.presented(authorization: nil, apiKey: nil) == nil)
    }
}

final class Box: @unchecked Sendable {
    let value: Int
    init(_ value: Int) { self.value = value }
}

struct SnapshotHolderTests {
    /// After a swap every thread sees the new value on its next load.
    @Test func swapIsSeenByEveryThread() async {
        let holder = SnapshotHolder(Box(1))
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<8 { group.addTask { #expect(holder.load().value == 1) } }
        }
        #expect(holder.store(Box(2)).value == 1)
        await withTaskGroup(of: Int.self) { group in
            for _ in 0..<8 { group.addTask { holder.load().value } }
            for await value in group { #expect(value == 2) }
        }
    }
}

/// A small policy set in memory, for tests of the gateway's stages without a running gateway.
enum PolicyFixturesForGateway {
    static let acmeKey = "sk_test_acme_0000000000000001"

    /// - Parameter routes: Extra routes, YAML flow mappings (one per entry).
    static func policy(routes: [String] = []) throws -> PolicySet {
        let sources = [
            PolicySource(relativePath: "gateway.yaml", text: "listen: { http: 127.0.0.1:0, admin: null }\n"),
            PolicySource(relativePath: "upstreams.yaml", text: "upstreams:\n  main: { url: http://127.0.0.1:1 }\n"),
            PolicySource(
                relativePath: "routes.yaml",
                text: "default_version: v2\nversions:\n  v2: { status: current }\nroutes:\n  - { id: get-order, versions: [v2], method: GET, path: \"/orders/{id}\", upstream: main }\n"
                    + routes.map { "  - \($0)\n" }.joined()
            ),
            PolicySource(relativePath: "plans.yaml", text: "plans:\n  gold: { concurrency: 2 }\n"),
            PolicySource(
                relativePath: "partners/acme.yaml",
                text: "id: acme\nname: ACME\nplan: gold\nversions: [v2]\nkeys:\n  - { id: k, sha256: \"\(SHA256Digest.of(acmeKey).hex)\" }\n"
            ),
        ]
        return try PolicySet.parse(sources: sources, directory: "/tmp", environment: [:], fileExists: { _ in true })
    }
}
