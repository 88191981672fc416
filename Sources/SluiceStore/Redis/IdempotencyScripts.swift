/// Idempotency keys in Lua, on one key per partner and idempotency key
/// (`PREFIX:{p:PARTNER}:idem:KEY`, hash-tagged like the admission keys). The value is
/// `C<expires ms>:<token>` while a request holds the key, `R<record>` once it finished. Every
/// write sets a TTL relative to now (`PX`), so Redis drops a crashed claim after its lease and a
/// record after its retention; a claim also carries its expiry in the script's clock, so a
/// manual test clock can expire it too.
enum IdempotencyScripts {
    /// Whether a key holds the claim of `token` (a release checks it before deleting).
    private static let owns = """
        local function owns(key, token)
          local value = redis.call('GET', key)
          if not value or string.sub(value, 1, 1) ~= 'C' then return false end
          local separator = string.find(value, ':', 2, true)
          return string.sub(value, separator + 1) == token
        end
        """

    /// One partner's records and claims of one event-loop tick: records first (so a claim in the
    /// same batch sees them), then claims in order. Its arguments start after ARGV[ao] and its
    /// keys after KEYS[ko] (Lua locals set before); it appends its results to `results`.
    /// Keys: the records' keys, then the claims' keys. Arguments: now ms ('' = Redis TIME), the
    /// number of records, then per record its token, record and retention ms, then per claim its
    /// token and lease ms. Results: per record 1 (recorded) or 0 (the claim is no longer the
    /// token's), then per claim `N` (claimed), `P<ms>` (held by a running request for up to ms
    /// more) or the recorded `R<record>`.
    private static let steps = """
        local now
        if ARGV[ao + 1] ~= '' then
          now = tonumber(ARGV[ao + 1])
        else
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end
        local records = tonumber(ARGV[ao + 2])
        for i = 1, records do
          local key = KEYS[ko + i]
          local token, record, retention = ARGV[ao + 3 * i], ARGV[ao + 3 * i + 1], ARGV[ao + 3 * i + 2]
          -- One command in the common case: the record replaces the key's value, and the old
          -- value says whether it was this token's claim. If not (the lease ran out and another
          -- request holds or recorded the key), the old value is put back.
          local old = redis.call('SET', key, 'R' .. record, 'XX', 'PX', retention, 'GET')
          if old and string.sub(old, 1, 1) == 'C' and string.sub(old, string.find(old, ':', 2, true) + 1) == token then
            results[#results + 1] = 1
          else
            if old and string.sub(old, 1, 1) == 'C' then
              local left = tonumber(string.sub(old, 2, string.find(old, ':', 2, true) - 1)) - now
              if left > 0 then redis.call('SET', key, old, 'PX', left) else redis.call('DEL', key) end
            elseif old then
              redis.call('SET', key, old, 'PX', retention)
            end
            results[#results + 1] = 0
          end
        end
        local base = ao + 3 + 3 * records
        for i = records + 1, #KEYS - ko do
          local key = KEYS[ko + i]
          local c = i - records - 1
          local token, lease = ARGV[base + 2 * c], ARGV[base + 2 * c + 1]
          local claim = 'C' .. (now + tonumber(lease)) .. ':' .. token
          local result = 'N'
          if not redis.call('SET', key, claim, 'NX', 'PX', lease) then
            local value = redis.call('GET', key)
            if value and string.sub(value, 1, 1) == 'R' then
              result = value
            elseif value then
              local separator = string.find(value, ':', 2, true)
              local expires = tonumber(string.sub(value, 2, separator - 1))
              if expires > now then
                result = 'P' .. (expires - now)
              else
                redis.call('SET', key, claim, 'PX', lease)
              end
            else
              redis.call('SET', key, claim, 'PX', lease)
            end
          end
          results[#results + 1] = result
        end
        """

    /// The records and claims alone, in one atomic step: keys and arguments as in `steps`.
    static let batch = RedisScript(
        """
        local ao, ko, results = 0, 0, {}
        \(steps)
        return results
        """
    )

    /// A partner's admission decisions and its pending records and claims in one atomic step:
    /// KEYS 1–2 and the first `argc` arguments are `AdmissionScripts.admit`'s, the rest are the
    /// batch's (as in `steps`), and the last argument is `argc`. Returns the decisions string,
    /// then the batch's results.
    static let admitAndBatch = RedisScript(
        """
        local argc = tonumber(ARGV[#ARGV])
        local function decide()
        \(AdmissionScripts.decisions)
        end
        local results = { decide() }
        local ao, ko = argc, 2
        \(steps)
        return results
        """
    )

    /// ARGV: 1 token. Returns 1, or 0 when the claim is not the token's.
    static let release = RedisScript(
        """
        \(owns)
        if not owns(KEYS[1], ARGV[1]) then return 0 end
        redis.call('DEL', KEYS[1])
        return 1
        """
    )
}
