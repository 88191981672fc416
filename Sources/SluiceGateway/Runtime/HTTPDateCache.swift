import Foundation
import SluiceCore
import Synchronization

/// The `Date` header value for "now", formatted at most once per second and read without a lock.
final class HTTPDateCache: Sendable {
    private final class Formatted: Sendable {
        let value: String
        init(_ value: String) { self.value = value }
    }

    private let second = Atomic<Int>(0)
    private let formatted = SnapshotHolder(Formatted(""))

    var current: String {
        let now = time(nil)
        if second.load(ordering: .acquiring) != now {
            formatted.store(Formatted(HTTPDate.format(Date(timeIntervalSince1970: TimeInterval(now)))))
            second.store(now, ordering: .releasing)
        }
        return formatted.load().value
    }
}
