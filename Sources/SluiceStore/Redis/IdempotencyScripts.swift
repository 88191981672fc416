/// Idempotency keys in Lua, on one key per partner and idempotency key
/// (`PREFIX:{p:PARTNER}:idem:KEY`, hash-tagged like the admission keys). The value is
/// `C<expires ms>:<token>` while a request holds the key, `R<record>` once it finished. Every
/// write sets a TTL relative to now (`PX`), so Redis drops a crashed claim after its lease and a
/// record after its retention; a claim also carries its expiry in the script's clock, so a
/// manual test clock can expire it too.
enum IdempotencyScripts {
    /// Whether a key holds the claim of `token`.
    private static let owns = """
        local function owns(key, token)
          local value = redis.call('GET', key)
          if not value or string.sub(value, 1, 1) ~= 'C' then return false end
          local separator = string.find(value, ':', 2, true)
          return string.sub(value, separator + 1) == token
        end
        """

    /// One partner's records and claims of one event-loop tick, in one atomic step: records
    /// first (so a claim in the same batch sees them), then claims in order.
    /// KEYS: the records' keys, then the claims' keys. ARGV: 1 now ms ('' = Redis TIME),
    /// 2 number of records, then per record its token, record and retention ms, then per claim
    /// its token and lease ms. Returns per record 1 (recorded) or 0 (the claim is no longer the
    /// token's), then per claim `N` (claimed), `P<ms>` (held by a running request for up to ms
    /// more) or the recorded `R<record>`.
    static let batch = RedisScript(
        """
        \(AdmissionScripts.now(argument: 1))
        \(owns)
        local records = tonumber(ARGV[2])
        local results = {}
        for i = 1, records do
          local token, record, retention = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
          if owns(KEYS[i], token) then
            redis.call('SET', KEYS[i], 'R' .. record, 'PX', retention)
            results[i] = 1
          else
            results[i] = 0
          end
        end
        local base = 3 + 3 * records
        for i = records + 1, #KEYS do
          local c = i - records - 1
          local token, lease = ARGV[base + 2 * c], ARGV[base + 2 * c + 1]
          local claim = 'C' .. (now + tonumber(lease)) .. ':' .. token
          local result = 'N'
          if not redis.call('SET', KEYS[i], claim, 'NX', 'PX', lease) then
            local value = redis.call('GET', KEYS[i])
            if value and string.sub(value, 1, 1) == 'R' then
              result = value
            elseif value then
              local separator = string.find(value, ':', 2, true)
              local expires = tonumber(string.sub(value, 2, separator - 1))
              if expires > now then
                result = 'P' .. (expires - now)
              else
                redis.call('SET', KEYS[i], claim, 'PX', lease)
              end
            else
              redis.call('SET', KEYS[i], claim, 'PX', lease)
            end
          end
          results[i] = result
        end
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
