/// Admission decisions in Lua, run atomically by Redis: the same rules as `PartnerLedger`
/// (SluiceCore) on two keys hash-tagged by partner, so Redis Cluster keeps them in one slot.
/// One call decides a batch of requests of one partner in order: the partner's state is read
/// once and written once, so a busy partner costs Redis little per request.
///
/// KEYS: 1 state (hash: t tokens, at ms, w quota window, n quota used, x and lx: until when
/// the state and lease keys' expiry is known to be set far enough), 2 leases (sorted set:
/// lease → expiry ms). Expired leases are only purged when the limit would otherwise be
/// reached, and expiries are only extended when they run low, so a typical call is five or
/// six commands. ARGV: 1 now ms (empty = Redis TIME), 2 lease ms, 3 rate per second
/// (0 = none), 4 burst, 5 quota (0 = none), 6 `day` or `month`, 7 concurrency (0 = none),
/// 8 number of leases to release first, then those leases, then for each request its cost and
/// lease id (empty = none).
/// Returns one string (a single reply element, however large the batch): per request, seven
/// comma-separated integers — verdict (0 admitted, 1 rate, 2 quota, 3 concurrency), retry-after
/// ms, whole tokens left, ms until the bucket is full, quota left, ms until the quota resets,
/// window length ms (-1 where a part has no limit) — with requests separated by `;`.
///
/// Key expiry is set with `PEXPIRE` as a duration from the script's `now`, never as an absolute
/// time: Redis expires keys by its own clock, so an absolute expiry computed from a `now` that
/// is not Redis's (a caller's clock, a manual test clock) would delete the state too early or
/// keep it too long. The `x`/`lx` fields are in the script's clock; they only decide when to
/// extend.
enum AdmissionScripts {
    /// Sets `now` (epoch ms) from `ARGV[argument]`, or from Redis `TIME` when that is empty.
    static func now(argument: Int) -> String {
        """
        local now
        if ARGV[\(argument)] ~= '' then
          now = tonumber(ARGV[\(argument)])
        else
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end
        """
    }

    static let admit = RedisScript("local argc = #ARGV\n" + decisions(claiming: false))

    /// The decisions of `admit` for its first `argc` arguments (a Lua local set before), ending
    /// in `return` of the decisions string; `IdempotencyScripts` runs it as a function. With
    /// `claiming`, each request has two more arguments, an idempotency claim's token ('' = none)
    /// and lease ms: an admitted request's key (the next of KEYS after `ck`) is claimed with the
    /// Lua function `claim`, a refused one's is not (0); the results go to the table `claims`.
    static func decisions(claiming: Bool) -> String {
        """
        \(now(argument: 1))
        local leasems = tonumber(ARGV[2])
        local rate, burst, quota, concurrency = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
        local releases = tonumber(ARGV[8])
        if releases > 0 then redis.call('ZREM', KEYS[2], unpack(ARGV, 9, 8 + releases)) end

        local state = redis.call('HMGET', KEYS[1], 't', 'at', 'w', 'n', 'x', 'lx')
        local available = burst
        if rate > 0 and state[1] then
          available = math.min(burst, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate / 1000)
        end

        local used, wid, wstart, wend = 0, 0, 0, 0
        if quota > 0 then
          local DAY = 86400000
          local day = math.floor(now / DAY)
          if ARGV[6] == 'month' then
            local z = day + 719468
            local era = math.floor(z / 146097)
            local doe = z - era * 146097
            local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
            local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
            local mp = math.floor((5 * doy + 2) / 153)
            local m = mp < 10 and mp + 3 or mp - 9
            local y = yoe + era * 400
            if m <= 2 then y = y + 1 end
            local function fromcivil(yy, mm)
              if mm <= 2 then yy = yy - 1 end
              local e = math.floor(yy / 400)
              local ye = yy - e * 400
              local dy = math.floor((153 * (mm > 2 and mm - 3 or mm + 9) + 2) / 5)
              return e * 146097 + ye * 365 + math.floor(ye / 4) - math.floor(ye / 100) + dy - 719468
            end
            wid = y * 12 + m - 1
            wstart = fromcivil(y, m) * DAY
            if m == 12 then wend = fromcivil(y + 1, 1) * DAY else wend = fromcivil(y, m + 1) * DAY end
          else
            wid, wstart, wend = day, day * DAY, (day + 1) * DAY
          end
          if state[3] and tonumber(state[3]) == wid then used = tonumber(state[4]) end
        end

        local inuse = 0
        if concurrency > 0 then
          inuse = redis.call('ZCARD', KEYS[2])
          if inuse + (argc - 8 - releases) / \(claiming ? 4 : 2) > concurrency then
            redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
            inuse = redis.call('ZCARD', KEYS[2])
          end
        end

        local results, leases, admitted = {}, {}, false
        for i = 9 + releases, argc, \(claiming ? 4 : 2) do
          local cost, lease = tonumber(ARGV[i]), ARGV[i + 1]
          local verdict, retry = 0, 0
          if quota > 0 and used + 1 > quota then
            verdict, retry = 2, wend - now
          elseif rate > 0 and available < cost then
            verdict, retry = 1, math.ceil((cost - available) * 1000 / rate)
          elseif concurrency > 0 and inuse >= concurrency then
            verdict, retry = 3, 1000
          else
            admitted = true
            if rate > 0 then available = available - cost end
            if quota > 0 then used = used + 1 end
            if concurrency > 0 and lease ~= '' then
              inuse = inuse + 1
              leases[#leases + 1] = now + leasems
              leases[#leases + 1] = lease
            end
          end
          local tokens, fullin, left, resetin, window = -1, -1, -1, -1, -1
          if rate > 0 then
            local a = math.max(0, available)
            tokens, fullin = math.floor(a), math.ceil((burst - a) * 1000 / rate)
          end
          if quota > 0 then
            left, resetin, window = math.max(0, quota - used), wend - now, wend - wstart
          end
          results[#results + 1] = string.format('%d,%d,%d,%d,%d,%d,%d', verdict, retry, tokens, fullin, left, resetin, window)
        \(claiming ? claimStep : "")
        end

        if admitted then
          -- The state must outlive a full refill of the bucket and the quota window; the lease
          -- set the newest lease. Expiries are set with a minute (or a lease) to spare and only
          -- renewed when less than that is left.
          local needed = now
          if rate > 0 then needed = now + math.ceil(burst * 1000 / rate) end
          if quota > 0 then needed = math.max(needed, wend) end
          local fields = {}
          if rate > 0 then fields[#fields + 1] = 't'; fields[#fields + 1] = available; fields[#fields + 1] = 'at'; fields[#fields + 1] = now end
          if quota > 0 then fields[#fields + 1] = 'w'; fields[#fields + 1] = wid; fields[#fields + 1] = 'n'; fields[#fields + 1] = used end
          local stateuntil = tonumber(state[5] or 0)
          if stateuntil < needed + 1000 then
            stateuntil = needed + 60000
            fields[#fields + 1] = 'x'; fields[#fields + 1] = stateuntil
          end
          local leaseuntil = tonumber(state[6] or 0)
          if #leases > 0 and leaseuntil < now + leasems + 1000 then
            leaseuntil = now + leasems * 2
            fields[#fields + 1] = 'lx'; fields[#fields + 1] = leaseuntil
          end
          if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
          if tonumber(state[5] or 0) ~= stateuntil then redis.call('PEXPIRE', KEYS[1], stateuntil - now) end
          if #leases > 0 then
            redis.call('ZADD', KEYS[2], unpack(leases))
            if tonumber(state[6] or 0) ~= leaseuntil then redis.call('PEXPIRE', KEYS[2], leaseuntil - now) end
          end
        end
        return table.concat(results, ';')
        """
    }

    /// The claim of one request in `decisions(claiming: true)`, made once its verdict is known.
    private static let claimStep = """
        if ARGV[i + 2] ~= '' then
            ck = ck + 1
            claims[#claims + 1] = verdict == 0 and claim(KEYS[ck], ARGV[i + 2], ARGV[i + 3], now) or 0
          end
        """

    /// Extends held leases. KEYS: 1 state, 2 leases. ARGV: 1 lease ms, 2 now ms (empty = Redis
    /// TIME), 3… lease ids.
    static let renew = RedisScript(
        """
        \(now(argument: 2))
        local leasems = tonumber(ARGV[1])
        local expiry = now + leasems
        for i = 3, #ARGV do redis.call('ZADD', KEYS[2], 'XX', expiry, ARGV[i]) end
        if redis.call('EXISTS', KEYS[2]) == 1 then
          redis.call('PEXPIRE', KEYS[2], leasems * 2)
          if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'lx', now + leasems * 2) end
        end
        return 0
        """
    )
}
