public import NIOCore
public import SluiceCore

extension RedisStore: IdempotencyStore {
    /// A partner's claims and records of one event-loop tick, sent as one call (records first).
    struct IdempotencyBatch {
        var records: [PendingRecord] = []
        var claims: [PendingClaim] = []
        var count: Int { records.count + claims.count }
    }

    struct PendingRecord {
        let key: String
        let token: String
        let record: String
        let retention: String
        let completion: (Result<Bool, any Error>) -> Void
    }

    struct PendingClaim {
        let key: String
        let token: String
        let lease: String
        let completion: (Result<IdempotencyClaim, any Error>) -> Void
    }

    /// The key of a partner's idempotency key, in the partner's hash slot.
    func idempotencyKey(_ partner: String, _ key: String) -> String {
        "\(keyPrefix):{p:\(partner)}:idem:\(key)"
    }

    /// Claims and records made on one event loop in one tick go out together, one call per
    /// partner: batching costs no latency (the call leaves in the same tick) and saves round trips.
    public func claim(
        partner: String, key: String, token: String, lease: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<IdempotencyClaim, any Error>) -> Void
    ) {
        let claim = PendingClaim(key: idempotencyKey(partner, key), token: token, lease: String(lease.milliseconds), completion: completion)
        enqueue(partner: partner, on: eventLoop) { $0.claims.append(claim) }
    }

    public func record(
        _ record: IdempotencyRecord, partner: String, key: String, token: String, retention: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<Bool, any Error>) -> Void
    ) {
        let pending = PendingRecord(
            key: idempotencyKey(partner, key), token: token, record: record.encoded(), retention: String(retention.milliseconds), completion: completion
        )
        enqueue(partner: partner, on: eventLoop) { $0.records.append(pending) }
    }

    /// Adds to the partner's batch of this tick; the first addition of a tick schedules the send
    /// (after the tick's I/O, so every request read in it joins). Callers off the client's loops
    /// send at once.
    private func enqueue(partner: String, on eventLoop: any EventLoop, _ add: (inout IdempotencyBatch) -> Void) {
        guard let loop = loops[ObjectIdentifier(eventLoop)], eventLoop.inEventLoop else {
            var single = IdempotencyBatch()
            add(&single)
            return send(single, on: eventLoop)
        }
        let sendScheduled = !loop.idempotencyBatches.isEmpty
        add(&loop.idempotencyBatches[partner, default: IdempotencyBatch()])
        if loop.idempotencyBatches[partner]!.count >= Self.batchLimit {
            send(loop.idempotencyBatches.removeValue(forKey: partner)!, on: eventLoop)
        }
        guard !sendScheduled else { return }
        eventLoop.execute {
            let batches = loop.idempotencyBatches
            loop.idempotencyBatches.removeAll(keepingCapacity: true)
            for batch in batches.values { self.send(batch, on: eventLoop) }
        }
    }

    private func send(_ batch: IdempotencyBatch, on eventLoop: any EventLoop) {
        guard batch.count > 0 else { return }
        var keys: [String] = []
        keys.reserveCapacity(batch.count)
        var arguments = [clock.map { String($0()) } ?? "", String(batch.records.count)]
        arguments.reserveCapacity(2 + 3 * batch.records.count + 2 * batch.claims.count)
        for record in batch.records {
            keys.append(record.key)
            arguments += [record.token, record.record, record.retention]
        }
        for claim in batch.claims {
            keys.append(claim.key)
            arguments += [claim.token, claim.lease]
        }
        client.evaluate(IdempotencyScripts.batch, keys: keys, arguments: arguments, on: eventLoop).whenComplete { result in
            switch result {
            case .success(.array(let replies)) where replies.count == batch.count:
                for (record, reply) in zip(batch.records, replies) { record.completion(.success(reply == .integer(1))) }
                for (claim, reply) in zip(batch.claims, replies.dropFirst(batch.records.count)) {
                    claim.completion(Result { try Self.claim(from: reply) })
                }
            case .success(let reply):
                Self.fail(batch, RedisError.protocolViolation("unexpected idempotency reply \(reply)"))
            case .failure(let error):
                Self.fail(batch, error)
            }
        }
    }

    private static func fail(_ batch: IdempotencyBatch, _ error: any Error) {
        for record in batch.records { record.completion(.failure(error)) }
        for claim in batch.claims { claim.completion(.failure(error)) }
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
