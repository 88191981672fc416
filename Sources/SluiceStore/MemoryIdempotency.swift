public import NIOCore
public import SluiceCore

/// The embedded store's idempotency keys: entries in shards with a lock each, expired lazily
/// when touched and swept now and then, so keys used once do not pile up.
final class IdempotencyTable: Sendable {
    private enum Entry {
        case claim(token: String, expires: Int64)
        case record(IdempotencyRecord, expires: Int64)

        var expires: Int64 {
            switch self {
            case .claim(_, let expires), .record(_, let expires): expires
            }
        }
    }

    private struct Shard {
        var entries: [String: Entry] = [:]
        var writesSinceSweep = 0
    }

    /// Writes to a shard between two sweeps of its expired entries.
    private static let sweepEvery = 4_096

    private let shards = Sharded { Shard() }

    func claim(_ id: String, token: String, leaseMilliseconds: Int64, now: Int64) -> IdempotencyClaim {
        shards.withLock(id) { shard in
            switch shard.entries[id] {
            case .record(let record, let expires) where expires > now:
                return .completed(record)
            case .claim(_, let expires) where expires > now:
                return .inProgress(retryAfterMilliseconds: expires - now)
            default:
                Self.write(.claim(token: token, expires: now + leaseMilliseconds), id, into: &shard, now: now)
                return .claimed
            }
        }
    }

    func record(_ record: IdempotencyRecord, _ id: String, token: String, retentionMilliseconds: Int64, now: Int64) -> Bool {
        shards.withLock(id) { shard in
            guard case .claim(token, _) = shard.entries[id] else { return false }
            Self.write(.record(record, expires: now + retentionMilliseconds), id, into: &shard, now: now)
            return true
        }
    }

    func renew(_ id: String, token: String, leaseMilliseconds: Int64, now: Int64) -> Bool {
        shards.withLock(id) { shard in
            guard case .claim(token, let expires) = shard.entries[id], expires > now else { return false }
            shard.entries[id] = .claim(token: token, expires: now + leaseMilliseconds)
            return true
        }
    }

    func release(_ id: String, token: String) -> Bool {
        shards.withLock(id) { shard in
            guard case .claim(token, _) = shard.entries[id] else { return false }
            shard.entries[id] = nil
            return true
        }
    }

    private static func write(_ entry: Entry, _ id: String, into shard: inout Shard, now: Int64) {
        shard.entries[id] = entry
        shard.writesSinceSweep += 1
        if shard.writesSinceSweep >= sweepEvery {
            shard.writesSinceSweep = 0
            shard.entries = shard.entries.filter { $0.value.expires > now }
        }
    }
}

extension MemoryStore: IdempotencyStore {
    public func claim(
        partner: String, key: String, token: String, lease: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<IdempotencyClaim, any Error>) -> Void
    ) {
        completion(.success(idempotency.claim(Self.idempotencyID(partner, key), token: token, leaseMilliseconds: lease.milliseconds, now: now())))
    }

    public func record(
        _ record: IdempotencyRecord, partner: String, key: String, token: String, retention: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<Bool, any Error>) -> Void
    ) {
        let id = Self.idempotencyID(partner, key)
        completion(.success(idempotency.record(record, id, token: token, retentionMilliseconds: retention.milliseconds, now: now())))
    }

    public func releaseClaim(
        partner: String, key: String, token: String, on eventLoop: any EventLoop, completion: @escaping (Result<Bool, any Error>) -> Void
    ) {
        completion(.success(idempotency.release(Self.idempotencyID(partner, key), token: token)))
    }

    public func renewClaims(_ claims: [IdempotencyClaimRequest], partner: String) async throws -> Int {
        let now = now()
        return claims.filter { idempotency.renew(Self.idempotencyID(partner, $0.key), token: $0.token, leaseMilliseconds: $0.lease.milliseconds, now: now) }.count
    }

    /// Partner and key in one string (a partner id holds no NUL).
    private static func idempotencyID(_ partner: String, _ key: String) -> String { partner + "\u{0}" + key }
}

/// Admission and claim as two steps: both are in-process and answer at once.
extension MemoryStore: ClaimingAdmissionStore {}
