/// Tasks in Lua, laid out for Redis Cluster: tasks are spread over `RedisStore.taskShards` (`tasks.shards`)
/// shards by id, and every key of a shard carries the shard's hash tag (`PREFIX:{t:N}:…`), so a
/// task's record and its queue entry live in one slot and each script touches one slot.
///
/// Keys of shard N: `…:task:ID` (hash: `r` revision, `j` the record as JSON without its
/// result, `o` the result as JSON once there is one, `q` the request as JSON until the task
/// finishes; expires after the retention), `…:queue` (stream of
/// `task ID` entries read by the consumer group `workers`), `…:index` (sorted set: task id →
/// accept time ms, for listing; trimmed to the retention), `…:webhook:MSG` (a webhook message as
/// JSON), `…:webhooks:due` (sorted set: message id → due ms), `…:webhooks:dead` (sorted set:
/// message id → when it died), `…:status:S` for each status S (sorted set: task id → when it
/// entered S; counted and trimmed to the retention for `sluice_tasks`), `…:dedupe:FINGERPRINT` (the
/// task identical requests get and its accept time; a deduplicated task lives in its
/// fingerprint's shard).
enum TaskScripts {
    /// Stores and enqueues a task. KEYS: task, queue, index, status:queued. ARGV: record,
    /// request, retention ms, id, revision. Needs `now`.
    private static let store = """
        local retention = tonumber(ARGV[3])
        redis.call('HSET', KEYS[1], 'r', ARGV[5], 'j', ARGV[1], 'q', ARGV[2])
        redis.call('PEXPIRE', KEYS[1], retention)
        redis.call('XADD', KEYS[2], '*', 'task', ARGV[4])
        redis.call('ZADD', KEYS[3], now, ARGV[4])
        redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - retention)
        \(outlive("KEYS[3]", "retention"))
        redis.call('ZADD', KEYS[4], now, ARGV[4])
        \(outlive("KEYS[4]", "retention"))
        """

    /// Lua that keeps a shard-wide sorted set (the index, a status set) for at least `ms` more:
    /// its expiry is pushed to a minute beyond only when less than `ms` is left, so about once a
    /// minute per key rather than on every call — a write fewer per call for Redis and for each
    /// replica it feeds. The set still outlives every member it holds.
    private static func outlive(_ key: String, _ milliseconds: String) -> String {
        "if redis.call('PTTL', \(key)) < \(milliseconds) then redis.call('PEXPIRE', \(key), \(milliseconds) + 60000) end"
    }

    /// KEYS: task, queue, index, status:queued. ARGV: record, request, retention ms, id,
    /// revision, now ms ('' = Redis TIME). Returns 1, or 0 when the task exists.
    static let accept = RedisScript(
        """
        \(AdmissionScripts.now(argument: 6))
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        \(store)
        return 1
        """
    )

    /// `accept` deduplicated (the task is in its fingerprint's shard). KEYS: task, queue, index,
    /// status:queued, status:running, status:succeeded, the fingerprint (a string: the task id
    /// identical requests get, a space, its accept time ms). ARGV: as `accept`, then the window
    /// ms. Returns the earlier task's id while it is queued or running, or succeeded within the
    /// window after its accept; else `accept`'s 1 or 0 (a stored task becomes the fingerprint's).
    static let acceptDeduplicated = RedisScript(
        """
        \(AdmissionScripts.now(argument: 6))
        local prior = redis.call('GET', KEYS[7])
        if prior then
          local space = string.find(prior, ' ', 1, true)
          local id, at = string.sub(prior, 1, space - 1), tonumber(string.sub(prior, space + 1))
          if redis.call('ZSCORE', KEYS[4], id) or redis.call('ZSCORE', KEYS[5], id) then return id end
          if redis.call('ZSCORE', KEYS[6], id) and now - at < tonumber(ARGV[7]) then return id end
        end
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        \(store)
        redis.call('SET', KEYS[7], ARGV[4] .. ' ' .. now, 'PX', math.max(retention, tonumber(ARGV[7])))
        return 1
        """
    )

    /// Settles an accept whose answer was lost. KEYS: task, index, status:queued. ARGV: task id,
    /// '1' to withdraw a stored task nothing has touched, how long a void refuses a late accept
    /// (ms). A task that is not stored becomes a void (a hash without `r`, which `accept`'s
    /// EXISTS refuses). Returns `stored`, `voided`, `withdrawn` or `moved`.
    static let resolveAccept = RedisScript(
        """
        local revision = redis.call('HGET', KEYS[1], 'r')
        if not revision then
          if redis.call('EXISTS', KEYS[1]) == 0 then
            redis.call('HSET', KEYS[1], 'void', '1')
            redis.call('PEXPIRE', KEYS[1], ARGV[3])
          end
          return 'voided'
        end
        if ARGV[2] ~= '1' then return 'stored' end
        if revision ~= '1' then return 'moved' end
        redis.call('DEL', KEYS[1])
        redis.call('ZREM', KEYS[2], ARGV[1])
        redis.call('ZREM', KEYS[3], ARGV[1])
        return 'withdrawn'
        """
    )

    /// Compare and set. KEYS: task, webhook message, webhooks due, then the status sets in
    /// `TaskStatus.allCases` order. ARGV: record, expected revision, new revision, retention ms,
    /// '1' when the task finished (its request is dropped), the webhook message to schedule now
    /// ('' = none), its id, now ms ('' = Redis TIME), the task id, the new and the stored
    /// status's positions (1-based) among the status sets, the result ('' = none). Returns 1, or
    /// 0 when the stored revision differs (or the task is gone).
    static let replace = RedisScript(
        """
        \(AdmissionScripts.now(argument: 8))
        if redis.call('HGET', KEYS[1], 'r') ~= ARGV[2] then return 0 end
        redis.call('HSET', KEYS[1], 'r', ARGV[3], 'j', ARGV[1])
        if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'o', ARGV[12]) end
        if ARGV[5] == '1' then redis.call('HDEL', KEYS[1], 'q') end
        redis.call('PEXPIRE', KEYS[1], ARGV[4])
        if ARGV[6] ~= '' then
          redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[4])
          redis.call('ZADD', KEYS[3], now, ARGV[7])
        end
        redis.call('ZREM', KEYS[3 + tonumber(ARGV[11])], ARGV[9])
        local status = KEYS[3 + tonumber(ARGV[10])]
        redis.call('ZADD', status, now, ARGV[9])
        \(outlive("status", "tonumber(ARGV[4])"))
        return 1
        """
    )

    /// Which queues have work for the group (ARGV[1]): entries it never delivered, or delivered
    /// ones idle for at least ARGV[2] ms (a lapsed lease). Reads only.
    static let queuesWithWork = ShardCheck(
        arguments: 2,
        hasWork: """
            local function hasWork(queue)
              if redis.call('EXISTS', queue) == 0 then return false end
              for _, group in ipairs(redis.call('XINFO', 'GROUPS', queue)) do
                local field = {}
                for i = 1, #group, 2 do field[group[i]] = group[i + 1] end
                if field['name'] == ARGV[1] then
                  if #redis.call('XRANGE', queue, '(' .. field['last-delivered-id'], '+', 'COUNT', 1) > 0 then return true end
                  return field['pending'] > 0 and #redis.call('XPENDING', queue, ARGV[1], 'IDLE', ARGV[2], '-', '+', 1) > 0
                end
              end
              -- No group yet: `take` makes one that starts at the beginning.
              return redis.call('XLEN', queue) > 0
            end
            """
    )

    /// Takes entries for a consumer. KEYS: queue. ARGV: group, consumer, most entries, lease ms.
    /// The group is created when missing (first use, or Redis restarted empty: `NOGROUP`).
    /// Returns entry id, task id and 1 (taken over) or 0 (new), flat.
    static let take = RedisScript(
        """
        redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
        local out = {}
        local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[4], '0-0', 'COUNT', ARGV[3])
        for _, entry in ipairs(claimed[2]) do
          if entry[2] then
            out[#out + 1] = entry[1]; out[#out + 1] = entry[2][2]; out[#out + 1] = 1
          end
        end
        local left = tonumber(ARGV[3]) - #out / 3
        if left > 0 then
          local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', left, 'STREAMS', KEYS[1], '>')
          if read then
            for _, entry in ipairs(read[1][2]) do
              out[#out + 1] = entry[1]; out[#out + 1] = entry[2][2]; out[#out + 1] = 0
            end
          end
        end
        return out
        """
    )

    /// Whether the consumer (ARGV[2]) holds entry `id` of the group (ARGV[1]).
    private static let holds = """
        local function holds(id)
          local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
          return pending[1] ~= nil and pending[1][2] == ARGV[2]
        end
        """

    /// Renews held entries (their idle time starts again). KEYS: queue. ARGV: group, consumer,
    /// entry ids. Returns the ids the consumer still held.
    static let renew = RedisScript(
        """
        \(holds)
        local held = {}
        for i = 3, #ARGV do
          if holds(ARGV[i]) then
            redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
            held[#held + 1] = ARGV[i]
          end
        end
        return held
        """
    )

    /// Removes an entry. KEYS: queue. ARGV: group, entry id.
    static let complete = RedisScript(
        """
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        redis.call('XDEL', KEYS[1], ARGV[2])
        return 1
        """
    )

    /// Puts a held entry's task back at the end of the queue. KEYS: queue. ARGV: group,
    /// consumer, entry id, task id. Returns 1, or 0 when the consumer no longer held the entry.
    static let requeue = RedisScript(
        """
        \(holds)
        if not holds(ARGV[3]) then return 0 end
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
        redis.call('XDEL', KEYS[1], ARGV[3])
        redis.call('XADD', KEYS[1], '*', 'task', ARGV[4])
        return 1
        """
    )

    /// Which webhooks due sets have a message due now (ARGV[1]: now ms, '' = Redis TIME). Reads only.
    static let dueSetsWithWork = ShardCheck(
        arguments: 1,
        hasWork: """
            \(AdmissionScripts.now(argument: 1))
            local function hasWork(due)
              return #redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, 1) > 0
            end
            """
    )

    /// Holds the due webhook messages of a shard for a sender. KEYS: webhooks due. ARGV: most
    /// messages, lease ms, now ms ('' = Redis TIME). Returns their ids; each is due again only
    /// after the lease.
    static let takeDue = RedisScript(
        """
        \(AdmissionScripts.now(argument: 3))
        local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
        for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id) end
        return ids
        """
    )

    /// Stores a message and makes it due after a delay, or buries it. KEYS: message, due, dead.
    /// ARGV: message, delay ms ('' = bury it), retention ms, id, now ms ('' = Redis TIME).
    static let schedule = RedisScript(
        """
        \(AdmissionScripts.now(argument: 5))
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
        if ARGV[2] ~= '' then
          redis.call('ZREM', KEYS[3], ARGV[4])
          redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[4])
        else
          redis.call('ZREM', KEYS[2], ARGV[4])
          redis.call('ZADD', KEYS[3], now, ARGV[4])
          redis.call('PEXPIRE', KEYS[3], ARGV[3])
        end
        return 1
        """
    )

    /// Redrives a dead message. KEYS: message, due, dead. ARGV: the message with its attempts
    /// reset, retention ms, id, now ms ('' = Redis TIME). Returns 0 when it was not dead.
    static let redrive = RedisScript(
        """
        \(AdmissionScripts.now(argument: 4))
        if redis.call('ZREM', KEYS[3], ARGV[3]) == 0 then return 0 end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        redis.call('ZADD', KEYS[2], now, ARGV[3])
        return 1
        """
    )

    /// Counts a shard's dead messages after dropping those buried longer than the retention ago
    /// (their messages expired). KEYS: dead. ARGV: retention ms, now ms ('' = Redis TIME).
    static let countDead = RedisScript(
        """
        \(AdmissionScripts.now(argument: 2))
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
        return redis.call('ZCARD', KEYS[1])
        """
    )

    /// Counts a shard's tasks by status after dropping entries older than the retention (their
    /// tasks expired). KEYS: the status sets, queued first. ARGV: retention ms, now ms ('' =
    /// Redis TIME), how many of the longest-waiting queued tasks to read for their routes, the
    /// shard's task key prefix (`…:task:`; same hash tag). Returns the counts in KEYS order, when
    /// the oldest queued task entered the queue (ms; -1 when none), then route and time pairs:
    /// each route's longest-waiting task among those read.
    static let census = RedisScript(
        """
        \(AdmissionScripts.now(argument: 2))
        local out = {}
        for i = 1, #KEYS do
          redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - tonumber(ARGV[1]))
          out[i] = redis.call('ZCARD', KEYS[i])
        end
        local waiting = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')
        out[#KEYS + 1] = waiting[2] and math.floor(tonumber(waiting[2])) or -1
        local seen = {}
        for i = 1, #waiting, 2 do
          local record = redis.call('HGET', ARGV[4] .. waiting[i], 'j')
          local ok, decoded = pcall(cjson.decode, record or '')
          local route = ok and type(decoded) == 'table' and decoded['route']
          if type(route) == 'string' and not seen[route] then
            seen[route] = true
            out[#out + 1] = route
            out[#out + 1] = math.floor(tonumber(waiting[i + 1]))
          end
        end
        return out
        """
    )

    static let all = [accept, acceptDeduplicated, resolveAccept, replace, queuesWithWork.declared, take, renew, complete, requeue, dueSetsWithWork.declared, takeDue, schedule, redrive, countDead, census]
}
