public import NIOCore
public import SluiceCore

extension RedisStore: IdempotencyStore {
    /// The key of a partner's idempotency key, in the partner's hash slot.
    func idempotencyKey(_ partner: String, _ key: String) -> String {
        "\(keyPrefix):{p:\(partner)}:idem:\(key)"
    }

    public func claim(
        partner: String, key: String, token: String, lease: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<IdempotencyClaim, any Error>) -> Void
    ) {
        let arguments = [clock.map { String($0()) } ?? "", token, String(lease.milliseconds)]
        client.evaluate(IdempotencyScripts.claim, keys: [idempotencyKey(partner, key)], arguments: arguments, on: eventLoop).whenComplete { result in
            completion(result.flatMap { reply in Result { try Self.claim(from: reply) } })
        }
    }

    public func record(
        _ record: IdempotencyRecord, partner: String, key: String, token: String, retention: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<Bool, any Error>) -> Void
    ) {
        let arguments = [token, record.encoded(), String(retention.milliseconds)]
        client.evaluate(IdempotencyScripts.record, keys: [idempotencyKey(partner, key)], arguments: arguments, on: eventLoop).whenComplete { result in
            completion(result.map { $0 == .integer(1) })
        }
    }

    public func releaseClaim(
        partner: String, key: String, token: String, on eventLoop: any EventLoop, completion: @escaping (Result<Bool, any Error>) -> Void
    ) {
        client.evaluate(IdempotencyScripts.release, keys: [idempotencyKey(partner, key)], arguments: [token], on: eventLoop).whenComplete { result in
            completion(result.map { $0 == .integer(1) })
        }
    }

    static func claim(from reply: RedisReply) throws -> IdempotencyClaim {
        guard case .string(let bytes) = reply, let kind = bytes.first else {
            throw RedisError.protocolViolation("unexpected idempotency reply \(reply)")
        }
        switch kind {
        case UInt8(ascii: "N"):
            return .claimed
        case UInt8(ascii: "P"):
            guard let milliseconds = Int64(String(decoding: bytes.dropFirst(), as: UTF8.self)) else { break }
            return .inProgress(retryAfterMilliseconds: milliseconds)
        case UInt8(ascii: "R"):
            guard let record = IdempotencyRecord(encoded: bytes.dropFirst()) else { break }
            return .completed(record)
        default:
            break
        }
        throw RedisError.protocolViolation("malformed idempotency reply")
    }
}
