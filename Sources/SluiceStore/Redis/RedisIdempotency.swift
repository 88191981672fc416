public import NIOCore
public import SluiceCore

extension RedisStore: ClaimingAdmissionStore {
    /// A partner's claims and records of one event-loop tick, sent as one call (records first).
    struct IdempotencyBatch {
        var records: [PendingRecord] = []
        var claims: [PendingClaim] = []
        var count: Int { records.count + claims.count }

        mutating func absorb(_ other: IdempotencyBatch) {
            records += other.records
            claims += other.claims
        }
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
        // Built in one buffer of the right size (two keys per keyed request).
        var text = ""
        text.reserveCapacity(keyPrefix.utf8.count + partner.utf8.count + key.utf8.count + 11)
        text += keyPrefix
        text += ":{p:"
        text += partner
        text += "}:idem:"
        text += key
        return text
    }

    /// Claims and records made on one event loop in one tick go out together, one call per
    /// partner — with the partner's next admission call when one is on its way (the batch then
    /// costs no call of its own), else alone at the end of the tick.
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

    /// Adds to the partner's batch; the first addition of a tick schedules a look at the end of
    /// the tick (after its I/O, so every request read in it joins): batches whose partner has an
    /// admission call under way wait to ride with the next one (`admitted(…)` sends them when no
    /// next one comes); the others go out alone. Callers off the client's loops send at once.
    private func enqueue(partner: String, on eventLoop: any EventLoop, _ add: (inout IdempotencyBatch) -> Void) {
        guard let loop = loops[eventLoop], eventLoop.inEventLoop else {
            var single = IdempotencyBatch()
            add(&single)
            return send(single, on: eventLoop)
        }
        add(&loop.idempotencyBatches[partner, default: IdempotencyBatch()])
        if loop.idempotencyBatches[partner]!.count >= Self.batchLimit {
            send(loop.idempotencyBatches.removeValue(forKey: partner)!, on: eventLoop)
        }
        guard !loop.idempotencyLookScheduled else { return }
        loop.idempotencyLookScheduled = true
        eventLoop.execute {
            loop.idempotencyLookScheduled = false
            let batches = loop.idempotencyBatches
            loop.idempotencyBatches.removeAll(keepingCapacity: true)
            for (partner, batch) in batches {
                if self.admissionCallIsUnderWay(partner, loop: loop) {
                    loop.idempotencyBatches[partner, default: IdempotencyBatch()].absorb(batch)
                } else {
                    self.send(batch, on: eventLoop)
                }
            }
        }
    }

    /// Sends a batch in a call of its own.
    func send(_ batch: IdempotencyBatch, on eventLoop: any EventLoop) {
        guard batch.count > 0 else { return }
        var keys: [String] = []
        var arguments: [String] = []
        append(batch, keys: &keys, arguments: &arguments)
        client.evaluate(IdempotencyScripts.batch, keys: keys, arguments: arguments, on: eventLoop).assumeIsolatedUnsafeUnchecked().whenComplete { result in
            switch result {
            case .success(.array(let replies)):
                Self.complete(batch, replies[...])
            case .success(let reply):
                Self.fail(batch, RedisError.protocolViolation("unexpected idempotency reply \(reply)"))
            case .failure(let error):
                Self.fail(batch, error)
            }
        }
    }

    /// Appends a batch's keys and arguments (as `IdempotencyScripts` lays them out).
    func append(_ batch: IdempotencyBatch, keys: inout [String], arguments: inout [String]) {
        keys.reserveCapacity(keys.count + batch.count)
        arguments.reserveCapacity(arguments.count + 2 + 3 * batch.records.count + 2 * batch.claims.count)
        // Appended one by one: an array literal per record would be a heap array per record.
        arguments.append(clock.map { String($0()) } ?? "")
        arguments.append(String(batch.records.count))
        for record in batch.records {
            keys.append(record.key)
            arguments.append(record.token)
            arguments.append(record.record)
            arguments.append(record.retention)
        }
        for claim in batch.claims {
            keys.append(claim.key)
            arguments.append(claim.token)
            arguments.append(claim.lease)
        }
    }

    /// Hands each record and claim of `batch` its reply.
    static func complete(_ batch: IdempotencyBatch, _ replies: ArraySlice<RedisReply>) {
        guard replies.count == batch.count else {
            return fail(batch, RedisError.protocolViolation("expected \(batch.count) idempotency replies, got \(replies.count)"))
        }
        for (record, reply) in zip(batch.records, replies) { record.completion(.success(reply == .integer(1))) }
        for (claim, reply) in zip(batch.claims, replies.dropFirst(batch.records.count)) {
            claim.completion(Result { try Self.claim(from: reply) })
        }
    }

    static func fail(_ batch: IdempotencyBatch, _ error: any Error) {
        for record in batch.records { record.completion(.failure(error)) }
        for claim in batch.claims { claim.completion(.failure(error)) }
    }

    public func releaseClaim(
        partner: String, key: String, token: String, on eventLoop: any EventLoop, completion: @escaping (Result<Bool, any Error>) -> Void
    ) {
        client.evaluate(IdempotencyScripts.release, keys: [idempotencyKey(partner, key)], arguments: [token], on: eventLoop).assumeIsolatedUnsafeUnchecked().whenComplete { result in
            completion(result.map { $0 == .integer(1) })
        }
    }

    public func renewClaims(_ claims: [IdempotencyClaimRequest], partner: String) async throws -> Int {
        guard !claims.isEmpty else { return 0 }
        var arguments = [clock.map { String($0()) } ?? ""]
        for claim in claims {
            arguments.append(claim.token)
            arguments.append(String(claim.lease.milliseconds))
        }
        let keys = claims.map { idempotencyKey(partner, $0.key) }
        guard case .integer(let renewed) = try await client.evaluate(IdempotencyScripts.renew, keys: keys, arguments: arguments, on: defaultEventLoop).get() else {
            throw RedisError.protocolViolation("unexpected claim renewal reply")
        }
        return Int(renewed)
    }

    static func claim(from reply: RedisReply) throws -> IdempotencyClaim {
        if reply == .integer(1) { return .claimed }
        guard case .string(let bytes) = reply, let kind = bytes.first else {
            throw RedisError.protocolViolation("unexpected idempotency reply \(reply)")
        }
        switch kind {
        case UInt8(ascii: "P"):
            guard let milliseconds = Int64(String(decoding: bytes.dropFirst(), as: UTF8.self)) else { break }
            return .inProgress(retryAfterMilliseconds: milliseconds)
        case UInt8(ascii: "R"):
            // As gateways before the records' own encoding wrote them.
            guard let record = IdempotencyRecord(encoded: bytes.dropFirst()) else { break }
            return .completed(record)
        case IdempotencyRecord.encodingMarker:
            guard let record = IdempotencyRecord(encoded: bytes) else { break }
            return .completed(record)
        default:
            break
        }
        throw RedisError.protocolViolation("malformed idempotency reply")
    }
}
