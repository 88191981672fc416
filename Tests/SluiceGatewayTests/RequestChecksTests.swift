import SluiceCore
import Testing
@testable import SluiceGateway

struct RequestChecksTests {
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
