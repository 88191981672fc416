public import NIOCore
public import SluiceCore

/// Usage on Redis, all under the hash tag `{usage}` (one slot: a flush is one script call).
/// `PREFIX:{usage}:DAY:PARTNER` is a hash with one field per `version|route`, whose value is
/// the row's counts as text — the counters in `UsageCounts.storedCounters` order, then `bucket:count` per latency
/// bucket, space-separated — merged by the script; `PREFIX:{usage}:DAY` is the set of partners
/// with counts that day. Both expire `usage.retention` after the day ends.
/// `PREFIX:{usage}:batch:ID` marks a flushed batch, so a retried flush is not counted twice.
enum UsageScripts {
    /// KEYS: batch marker, then per (day, partner) group its hash and its day's set.
    /// ARGV: marker lifetime ms, then per group: partner, expiry (epoch s), row count N, then
    /// N field/counts pairs. Returns 1, or 0 when the batch was added before.
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
        for k = 2, #KEYS, 2 do
          local partner, expiry, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
          a = a + 3
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
          redis.call('SADD', KEYS[k + 1], partner)
          redis.call('EXPIREAT', KEYS[k + 1], expiry)
        end
        return 1
        """
    )

    /// Most rows per script call; a larger batch goes out in several calls (each with its own marker).
    static let rowsPerCall = 500
    /// Reads in flight at once: each read's deadline (the store timeout) starts when it is sent.
    static let readsInFlight = 16
}

extension RedisStore: UsageStore {
    private var usageBase: String { "\(keyPrefix):{usage}" }
    private func usageDayKey(_ day: UsageDay) -> String { "\(usageBase):\(day.text)" }
    private func usageHashKey(_ day: UsageDay, _ partner: String) -> String { "\(usageBase):\(day.text):\(partner)" }

    public func addUsage(_ batch: UsageBatch, batchID: String, retention: Duration) async throws {
        var groups: [String: (day: UsageDay, partner: String, rows: [String])] = [:]
        for (key, counts) in batch {
            let hash = usageHashKey(key.day, key.partner)
            groups[hash, default: (key.day, key.partner, [])].rows += ["\(key.version)|\(key.route)", counts.storedText]
        }
        var calls: [(keys: [String], arguments: [String], rows: Int)] = []
        for (hash, group) in groups.sorted(by: { $0.key < $1.key }) {
            if calls.isEmpty || calls[calls.count - 1].rows >= UsageScripts.rowsPerCall {
                calls.append(([], [String(86_400_000)], 0))
            }
            calls[calls.count - 1].keys += [hash, usageDayKey(group.day)]
            calls[calls.count - 1].arguments += [group.partner, String(group.day.expiry(retention: retention)), String(group.rows.count / 2)]
            calls[calls.count - 1].arguments += group.rows
            calls[calls.count - 1].rows += group.rows.count / 2
        }
        let eventLoop = client.defaultEventLoop
        let replies = calls.enumerated().map { index, call in
            client.evaluate(UsageScripts.add, keys: ["\(usageBase):batch:\(batchID):\(index)"] + call.keys, arguments: call.arguments, durable: false, on: eventLoop)
        }
        for reply in replies { _ = try await reply.get() }
    }

    public func usage(from: UsageDay, to: UsageDay, partner: String?) async throws -> UsageBatch {
        let days = (from.number...to.number).map(UsageDay.init(number:))
        var hashes: [(UsageDay, String)] = []
        if let partner {
            hashes = days.map { ($0, partner) }
        } else {
            let members = try await readAll(days.map { ["SMEMBERS", usageDayKey($0)] })
            for (day, reply) in zip(days, members) {
                guard case .array(let partners) = reply else { continue }
                for case .string(let bytes) in partners { hashes.append((day, String(decoding: bytes, as: UTF8.self))) }
            }
        }
        let replies = try await readAll(hashes.map { day, partner in ["HGETALL", usageHashKey(day, partner)] })
        var usage: UsageBatch = [:]
        for ((day, partner), reply) in zip(hashes, replies) {
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
