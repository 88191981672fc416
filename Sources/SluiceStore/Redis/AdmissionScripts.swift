/// The admission decision in Lua, run atomically by Redis: the same rules as `PartnerLedger`
/// (SluiceCore), on three keys hash-tagged by partner so Redis Cluster keeps them together.
///
/// KEYS: 1 bucket (hash t, at), 2 quota (hash w, n), 3 leases (sorted set: lease → expiry ms).
/// ARGV: 1 rate per second (0 = none), 2 burst, 3 cost, 4 quota (0 = none), 5 `day` or `month`,
/// 6 concurrency (0 = none), 7 lease id (empty = none), 8 lease ms, 9 now ms (empty = Redis
/// TIME), 10… leases to release before deciding.
/// Returns: verdict (0 admitted, 1 rate, 2 quota, 3 concurrency), retry-after ms, whole tokens
/// left, ms until the bucket is full, quota left, ms until the quota resets, window length ms
/// (-1 where a part has no limit).
enum AdmissionScripts {
    static let admit = RedisScript(
        """
        local now
        if ARGV[9] ~= '' then
          now = tonumber(ARGV[9])
        else
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end
        for i = 10, #ARGV do redis.call('ZREM', KEYS[3], ARGV[i]) end
        local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
        local quota, concurrency = tonumber(ARGV[4]), tonumber(ARGV[6])
        local leasems = tonumber(ARGV[8])

        local inuse = 0
        if concurrency > 0 then
          redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%.0f', now))
          inuse = redis.call('ZCARD', KEYS[3])
        end

        local available = burst
        if rate > 0 then
          local b = redis.call('HMGET', KEYS[1], 't', 'at')
          if b[1] then
            available = math.min(burst, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate / 1000)
          end
        end

        local used, wid, wstart, wend = 0, 0, 0, 0
        if quota > 0 then
          local DAY = 86400000
          local day = math.floor(now / DAY)
          if ARGV[5] == 'month' then
            local function civil(days)
              local z = days + 719468
              local era = math.floor(z / 146097)
              local doe = z - era * 146097
              local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
              local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
              local mp = math.floor((5 * doy + 2) / 153)
              local m = mp < 10 and mp + 3 or mp - 9
              local y = yoe + era * 400
              if m <= 2 then y = y + 1 end
              return y, m
            end
            local function fromcivil(y, m, d)
              if m <= 2 then y = y - 1 end
              local era = math.floor(y / 400)
              local yoe = y - era * 400
              local mm = m > 2 and m - 3 or m + 9
              local doy = math.floor((153 * mm + 2) / 5) + d - 1
              local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
              return era * 146097 + doe - 719468
            end
            local y, m = civil(day)
            wid = y * 12 + m - 1
            wstart = fromcivil(y, m, 1) * DAY
            if m == 12 then wend = fromcivil(y + 1, 1, 1) * DAY else wend = fromcivil(y, m + 1, 1) * DAY end
          else
            wid, wstart, wend = day, day * DAY, (day + 1) * DAY
          end
          local q = redis.call('HMGET', KEYS[2], 'w', 'n')
          if q[1] and tonumber(q[1]) == wid then used = tonumber(q[2]) end
        end

        local verdict, retry = 0, 0
        if quota > 0 and used + 1 > quota then
          verdict, retry = 2, wend - now
        elseif rate > 0 and available < cost then
          verdict, retry = 1, math.ceil((cost - available) * 1000 / rate)
        elseif concurrency > 0 and inuse >= concurrency then
          verdict, retry = 3, 1000
        else
          if rate > 0 then
            available = available - cost
            redis.call('HSET', KEYS[1], 't', string.format('%.17g', available), 'at', string.format('%.0f', now))
            redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
          end
          if quota > 0 then
            used = used + 1
            redis.call('HSET', KEYS[2], 'w', string.format('%.0f', wid), 'n', used)
            redis.call('PEXPIREAT', KEYS[2], string.format('%.0f', wend + 60000))
          end
          if concurrency > 0 and ARGV[7] ~= '' then
            redis.call('ZADD', KEYS[3], string.format('%.0f', now + leasems), ARGV[7])
            redis.call('PEXPIRE', KEYS[3], leasems * 2)
          end
        end

        local tokens, fullin, left, resetin, window = -1, -1, -1, -1, -1
        if rate > 0 then
          local a = math.max(0, available)
          tokens = math.floor(a)
          fullin = math.ceil((burst - a) * 1000 / rate)
        end
        if quota > 0 then
          left = math.max(0, quota - used)
          resetin = wend - now
          window = wend - wstart
        end
        return {verdict, retry, tokens, fullin, left, resetin, window}
        """
    )

    /// Extends held leases. KEYS: 1 leases. ARGV: 1 lease ms, 2 now ms (empty = Redis TIME), 3… lease ids.
    static let renew = RedisScript(
        """
        local now
        if ARGV[2] ~= '' then
          now = tonumber(ARGV[2])
        else
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end
        local leasems = tonumber(ARGV[1])
        local expiry = string.format('%.0f', now + leasems)
        for i = 3, #ARGV do redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i]) end
        if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], leasems * 2) end
        return 0
        """
    )
}
