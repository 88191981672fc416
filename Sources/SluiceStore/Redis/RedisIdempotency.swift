public import NIOCore
public import SluiceCore

extension RedisStore: IdempotencyStore {
    /// A record waiting for its loop's next batch.
    struct PendingRecord {
        let key: String
        let token: String
        let record: String
        let retention: String
        let completion: (Result<Bool, any Error>) -> Void
    }

    /// A claim waiting for its loop's next batch.
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

    /// Claims made on one event loop in one tick go out together, one call per partner.
    public func claim(
        partner: String, key: String, token: String, lease: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<IdempotencyClaim, any Error>) -> Void
    ) {
        let pending = PendingClaim(key: idempotencyKey(partner, key), token: token, lease: String(lease.milliseconds), completion: completion)
        guard let loop = loops[ObjectIdentifier(eventLoop)], eventLoop.inEventLoop else {
            return sendClaims([pending], on: eventLoop)
        }
        batchedInThisTick(pending, partner: partner, pending: \.pendingClaims, loop: loop, on: eventLoop, send: sendClaims)
    }

    private func sendClaims(_ batch: [PendingClaim], on eventLoop: any EventLoop) {
        var arguments = [clock.map { String($0()) } ?? ""]
        arguments.reserveCapacity(1 + 2 * batch.count)
        for pending in batch { arguments += [pending.token, pending.lease] }
        client.evaluate(IdempotencyScripts.claim, keys: batch.map(\.key), arguments: arguments, on: eventLoop).whenComplete { result in
            switch result {
            case .success(.array(let replies)) where replies.count == batch.count:
                for (pending, reply) in zip(batch, replies) { pending.completion(Result { try Self.claim(from: reply) }) }
            case .success(let reply):
                for pending in batch { pending.completion(.failure(RedisError.protocolViolation("unexpected claim reply \(reply)"))) }
            case .failure(let error):
                for pending in batch { pending.completion(.failure(error)) }
            }
        }
    }

    /// Queues `item` for the partner's batch of this event-loop tick; the first item of a tick
    /// schedules the send (after the tick's I/O, so every request read in it joins).
    private func batchedInThisTick<Item>(
        _ item: Item, partner: String, pending: ReferenceWritableKeyPath<LoopState, [String: [Item]]>, loop: LoopState, on eventLoop: any EventLoop,
        send: @escaping ([Item], any EventLoop) -> Void
    ) {
        let sendScheduled = !loop[keyPath: pending].isEmpty
        loop[keyPath: pending][partner, default: []].append(item)
        guard !sendScheduled else { return }
        eventLoop.execute {
            let batches = loop[keyPath: pending]
            loop[keyPath: pending].removeAll(keepingCapacity: true)
            for batch in batches.values {
                var start = 0
                while start < batch.count {
                    let end = min(start + Self.batchLimit, batch.count)
                    send(Array(batch[start..<end]), eventLoop)
                    start = end
                }
            }
        }
    }

    /// Records made on one event loop in one tick go out together, one call per partner (as
    /// claims do): batching costs no latency and saves round trips.
    public func record(
        _ record: IdempotencyRecord, partner: String, key: String, token: String, retention: Duration, on eventLoop: any EventLoop,
        completion: @escaping (Result<Bool, any Error>) -> Void
    ) {
        let pending = PendingRecord(
            key: idempotencyKey(partner, key), token: token, record: record.encoded(), retention: String(retention.milliseconds), completion: completion
        )
        guard let loop = loops[ObjectIdentifier(eventLoop)], eventLoop.inEventLoop else {
            return sendRecords([pending], on: eventLoop)
        }
        batchedInThisTick(pending, partner: partner, pending: \.pendingRecords, loop: loop, on: eventLoop, send: sendRecords)
    }

    private func sendRecords(_ batch: [PendingRecord], on eventLoop: any EventLoop) {
        var arguments: [String] = []
        arguments.reserveCapacity(3 * batch.count)
        for pending in batch { arguments += [pending.token, pending.record, pending.retention] }
        client.evaluate(IdempotencyScripts.record, keys: batch.map(\.key), arguments: arguments, on: eventLoop).whenComplete { result in
            switch result {
            case .success(.array(let results)) where results.count == batch.count:
                for (pending, outcome) in zip(batch, results) { pending.completion(.success(outcome == .integer(1))) }
            case .success(let reply):
                for pending in batch { pending.completion(.failure(RedisError.protocolViolation("unexpected record reply \(reply)"))) }
            case .failure(let error):
                for pending in batch { pending.completion(.failure(error)) }
            }
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
