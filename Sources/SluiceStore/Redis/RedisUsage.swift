public import NIOCore
public import SluiceCore

/// Usage on Redis, all under the hash tag `{usage}` (one slot: a flush is one script call):
/// `PREFIX:{usage}:DAY:PARTNER` is a hash of `version|route|counter` → count (counters as in
/// the CSV, `h<N>` for latency bucket N), `PREFIX:{usage}:DAY` the set of partners with counts
/// that day — both expire `usage.retention` after the day ends — and `PREFIX:{usage}:batch:ID`
/// marks a flushed batch for a day, so a retried flush is not counted twice.
enum UsageScripts {
    /// KEYS: batch marker, then per (day, partner) group its hash and its day's set.
    /// ARGV: marker lifetime ms, then per group: partner, expiry (epoch s), field count N, then
    /// N field/increment pairs. Returns 1, or 0 when the batch was added before.
    static let add = RedisScript(
        """
        if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
        local a = 2
        for k = 2, #KEYS, 2 do
          local partner, expiry, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
          a = a + 3
          for _ = 1, n do
            redis.call('HINCRBY', KEYS[k], ARGV[a], ARGV[a + 1])
            a = a + 2
          end
          redis.call('EXPIREAT', KEYS[k], expiry)
          redis.call('SADD', KEYS[k + 1], partner)
          redis.call('EXPIREAT', KEYS[k + 1], expiry)
        end
        return 1
        """
    )

    /// Most fields per script call; a larger batch goes out in several calls (each with its own marker).
    static let fieldsPerCall = 4_000
}

extension RedisStore: UsageStore {
    private var usageBase: String { "\(keyPrefix):{usage}" }
    private func usageDayKey(_ day: UsageDay) -> String { "\(usageBase):\(day.text)" }
    private func usageHashKey(_ day: UsageDay, _ partner: String) -> String { "\(usageBase):\(day.text):\(partner)" }

    public func addUsage(_ batch: UsageBatch, batchID: String, retention: Duration) async throws {
        var groups: [String: (day: UsageDay, partner: String, fields: [String])] = [:]
        for (key, counts) in batch {
            let hash = usageHashKey(key.day, key.partner)
            let prefix = "\(key.version)|\(key.route)|"
            var fields = groups[hash]?.fields ?? []
            for (name, value) in counts.storedFields { fields += [prefix + name, String(value)] }
            groups[hash] = (key.day, key.partner, fields)
        }
        var calls: [(keys: [String], arguments: [String], fields: Int)] = []
        for (hash, group) in groups.sorted(by: { $0.key < $1.key }) {
            if calls.isEmpty || calls[calls.count - 1].fields >= UsageScripts.fieldsPerCall {
                calls.append(([], [String(86_400_000)], 0))
            }
            calls[calls.count - 1].keys += [hash, usageDayKey(group.day)]
            calls[calls.count - 1].arguments += [group.partner, String(group.day.expiry(retention: retention)), String(group.fields.count / 2)]
            calls[calls.count - 1].arguments += group.fields
            calls[calls.count - 1].fields += group.fields.count / 2
        }
        let eventLoop = client.defaultEventLoop
        let replies = calls.enumerated().map { index, call in
            client.evaluate(UsageScripts.add, keys: ["\(usageBase):batch:\(batchID):\(index)"] + call.keys, arguments: call.arguments, on: eventLoop)
        }
        for reply in replies { _ = try await reply.get() }
    }

    public func usage(from: UsageDay, to: UsageDay, partner: String?) async throws -> UsageBatch {
        let eventLoop = client.defaultEventLoop
        let days = (from.number...to.number).map(UsageDay.init(number:))
        var hashes: [(UsageDay, String)] = []
        if let partner {
            hashes = days.map { ($0, partner) }
        } else {
            let members = days.map { client.send(["SMEMBERS", usageDayKey($0)], on: eventLoop) }
            for (day, reply) in zip(days, members) {
                guard case .array(let partners) = try await reply.get() else { continue }
                for case .string(let bytes) in partners { hashes.append((day, String(decoding: bytes, as: UTF8.self))) }
            }
        }
        let replies = hashes.map { day, partner in client.send(["HGETALL", usageHashKey(day, partner)], on: eventLoop) }
        var usage: UsageBatch = [:]
        for ((day, partner), reply) in zip(hashes, replies) {
            guard case .array(let items) = try await reply.get() else { continue }
            var index = 0
            while index + 1 < items.count {
                defer { index += 2 }
                guard case .string(let field) = items[index], case .string(let value) = items[index + 1],
                    let count = Int64(String(decoding: value, as: UTF8.self))
                else { continue }
                let parts = String(decoding: field, as: UTF8.self).split(separator: "|", maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count == 3 else { continue }
                let key = UsageKey(day: day, partner: partner, version: String(parts[0]), route: String(parts[1]))
                usage[key, default: UsageCounts()].add(storedField: parts[2], value: count)
            }
        }
        return usage
    }
}
