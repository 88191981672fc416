import NIOCore
public import SluiceCore

/// Usage on Redis, tagged per partner so that partners spread over a cluster's nodes.
/// `PREFIX:{u:PARTNER}:DAY` is a hash with one field per `version|route`, whose value is the
/// row's counts as text — the counters in `UsageCounts.storedCounters` order, then
/// `bucket:count` per latency bucket, space-separated — merged by the script;
/// `PREFIX:{ud:DAY:K}` (K = 0..<`indexShards`, by the partner's slot) are the sets of partners
/// with counts that day. Both expire `usage.retention` after the day ends.
/// `PREFIX:{u:PARTNER}:batch:ID` marks a flushed batch, so a retried flush is not counted twice.
/// Gateways before this layout kept everything under `PREFIX:{usage}:…` (one slot); reports
/// still read those keys until they expire.
enum UsageScripts {
    /// KEYS: batch marker, then one hash per day (all of one partner). ARGV: marker lifetime
    /// ms, then per hash: expiry (epoch s), row count N, then N field/counts pairs. Returns 1,
    /// or 0 when the batch was added before.
    static let add = RedisScript(
        """
        if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
        local counters = \(UsageCounts.storedCounters.count)
        local function parse(text, sums, buckets)
          local i = 0
          for token in string.gmatch(text, '%S+') do
            local b, n = string.match(token, '^(%d+):(%d+)$')
            if b then
              buckets[b] = (buckets[b] or 0) + tonumber(n)
            elseif i < counters then
              i = i + 1
              sums[i] = (sums[i] or 0) + tonumber(token)
            end
          end
        end
        local a = 2
        for k = 2, #KEYS do
          local expiry, n = ARGV[a], tonumber(ARGV[a + 1])
          a = a + 2
          for _ = 1, n do
            local field, added = ARGV[a], ARGV[a + 1]
            a = a + 2
            local old = redis.call('HGET', KEYS[k], field)
            if old then
              local sums, buckets = {}, {}
              parse(old, sums, buckets)
              parse(added, sums, buckets)
              local parts = {}
              for i = 1, counters do parts[i] = string.format('%d', sums[i] or 0) end
              for b, c in pairs(buckets) do parts[#parts + 1] = b .. ':' .. string.format('%d', c) end
              added = table.concat(parts, ' ')
            end
            redis.call('HSET', KEYS[k], field, added)
          end
          redis.call('EXPIREAT', KEYS[k], expiry)
        end
        return 1
        """
    )

    /// Sets of partners per day: a day's partners spread over this many keys (slots).
    static let indexShards = 8
    /// Most rows per script call; a larger batch goes out in several calls (each with its own marker).
    static let rowsPerCall = 500
    /// Reads in flight at once: each read's deadline (the store timeout) starts when it is sent.
    static let readsInFlight = 16
}

extension RedisStore: UsageStore {
    private func usageHashKey(_ day: UsageDay, _ partner: String) -> String { "\(keyPrefix):{u:\(partner)}:\(day.text)" }
    private func usageIndexKey(_ day: UsageDay, shard: Int) -> String { "\(keyPrefix):{ud:\(day.text):\(shard)}" }
    private func usageIndexKey(_ day: UsageDay, partner: String) -> String {
        usageIndexKey(day, shard: HashSlot.of(partner) % UsageScripts.indexShards)
    }
    /// The keys of gateways before the per-partner layout (read, never written).
    private func legacyDayKey(_ day: UsageDay) -> String { "\(keyPrefix):{usage}:\(day.text)" }
    private func legacyHashKey(_ day: UsageDay, _ partner: String) -> String { "\(keyPrefix):{usage}:\(day.text):\(partner)" }

    /// One script call per partner (its days' hashes share the partner's slot), each with the
    /// partner's index entries sent first; all pipelined.
    public func addUsage(_ batch: UsageBatch, batchID: String, retention: Duration) async throws {
        var byPartner: [String: [UsageDay: [String]]] = [:]
        for (key, counts) in batch {
            byPartner[key.partner, default: [:]][key.day, default: []] += ["\(key.version)|\(key.route)", counts.storedText]
        }
        let eventLoop = client.defaultEventLoop
        var replies: [EventLoopFuture<RedisReply>] = []
        for (partner, days) in byPartner.sorted(by: { $0.key < $1.key }) {
            var calls: [(keys: [String], arguments: [String], rows: Int)] = []
            for (day, rows) in days.sorted(by: { $0.key.number < $1.key.number }) {
                let expiry = String(day.expiry(retention: retention))
                replies.append(client.send(["SADD", usageIndexKey(day, partner: partner), partner], on: eventLoop))
                replies.append(client.send(["EXPIREAT", usageIndexKey(day, partner: partner), expiry], on: eventLoop))
                if calls.isEmpty || calls[calls.count - 1].rows >= UsageScripts.rowsPerCall {
                    calls.append(([], [String(86_400_000)], 0))
                }
                calls[calls.count - 1].keys.append(usageHashKey(day, partner))
                calls[calls.count - 1].arguments += [expiry, String(rows.count / 2)] + rows
                calls[calls.count - 1].rows += rows.count / 2
            }
            for (index, call) in calls.enumerated() {
                let marker = "\(keyPrefix):{u:\(partner)}:batch:\(batchID):\(index)"
                replies.append(client.evaluate(UsageScripts.add, keys: [marker] + call.keys, arguments: call.arguments, durable: false, on: eventLoop))
            }
        }
        for reply in replies { _ = try await reply.get() }
    }

    public func usage(from: UsageDay, to: UsageDay, partner: String?) async throws -> UsageBatch {
        let days = (from.number...to.number).map(UsageDay.init(number:))
        var hashes: [(day: UsageDay, partner: String, key: String)] = []
        if let partner {
            hashes = days.flatMap { [($0, partner, usageHashKey($0, partner)), ($0, partner, legacyHashKey($0, partner))] }
        } else {
            let shards = 0..<UsageScripts.indexShards
            let lookups = days.flatMap { day in shards.map { (day, usageIndexKey(day, shard: $0), false) } + [(day, legacyDayKey(day), true)] }
            let members = try await readAll(lookups.map { ["SMEMBERS", $0.1] })
            for ((day, _, legacy), reply) in zip(lookups, members) {
                for partner in Self.strings(reply) {
                    hashes.append((day, partner, legacy ? legacyHashKey(day, partner) : usageHashKey(day, partner)))
                }
            }
        }
        let replies = try await readAll(hashes.map { ["HGETALL", $0.key] })
        var usage: UsageBatch = [:]
        for ((day, partner, _), reply) in zip(hashes, replies) {
            guard case .array(let items) = reply else { continue }
            var index = 0
            while index + 1 < items.count {
                defer { index += 2 }
                guard case .string(let field) = items[index], case .string(let value) = items[index + 1] else { continue }
                let parts = String(decoding: field, as: UTF8.self).split(separator: "|", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2, let counts = UsageCounts(storedText: String(decoding: value, as: UTF8.self)) else { continue }
                usage[UsageKey(day: day, partner: partner, version: String(parts[0]), route: String(parts[1])), default: UsageCounts()].merge(counts)
            }
        }
        return usage
    }

    /// Sends `commands` with at most `readsInFlight` under way; replies in order.
    private func readAll(_ commands: [[String]]) async throws -> [RedisReply] {
        let eventLoop = client.defaultEventLoop
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        var start = 0
        while start < commands.count {
            let end = min(commands.count, start + UsageScripts.readsInFlight)
            let futures = commands[start..<end].map { client.send($0, on: eventLoop) }
            for future in futures { replies.append(try await future.get()) }
            start = end
        }
        return replies
    }
}
