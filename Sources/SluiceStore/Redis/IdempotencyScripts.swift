/// Idempotency keys in Lua, one atomic step each, on one key per partner and idempotency key
/// (`PREFIX:{p:PARTNER}:idem:KEY`, hash-tagged like the admission keys). The value is
/// `C<expires ms>:<token>` while a request holds the key, `R<record>` once it finished. Every
/// write sets a TTL relative to now (`PX`), so Redis drops a crashed claim after its lease and a
/// record after its retention; a claim also carries its expiry in the script's clock, so a
/// manual test clock can expire it too.
enum IdempotencyScripts {
    /// Claims several keys of one partner, in order. ARGV: 1 now ms ('' = Redis TIME), then per
    /// key its token and lease ms. Returns per key `N` (claimed), `P<ms>` (held by a running
    /// request for up to ms more) or the recorded `R<record>`.
    static let claim = RedisScript(
        """
        \(AdmissionScripts.now(argument: 1))
        local results = {}
        for i = 1, #KEYS do
          local token, lease = ARGV[2 * i], ARGV[2 * i + 1]
          local value = redis.call('GET', KEYS[i])
          local result
          if value then
            if string.sub(value, 1, 1) == 'R' then
              result = value
            else
              local separator = string.find(value, ':', 2, true)
              local expires = tonumber(string.sub(value, 2, separator - 1))
              if expires > now then result = 'P' .. (expires - now) end
            end
          end
          if not result then
            redis.call('SET', KEYS[i], 'C' .. (now + tonumber(lease)) .. ':' .. token, 'PX', lease)
            result = 'N'
          end
          results[i] = result
        end
        return results
        """
    )

    /// Whether KEYS[i] holds the claim of `token`.
    private static let ownsClaim = """
        local function owns(key, token)
          local value = redis.call('GET', key)
          if not value or string.sub(value, 1, 1) ~= 'C' then return false end
          local separator = string.find(value, ':', 2, true)
          return string.sub(value, separator + 1) == token
        end
        """

    /// Records several finished requests of one partner: for each key, ARGV holds its token,
    /// record and retention ms. Returns per key 1, or 0 when its claim is not the token's.
    static let record = RedisScript(
        """
        \(ownsClaim)
        local results = {}
        for i = 1, #KEYS do
          local token, record, retention = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
          if owns(KEYS[i], token) then
            redis.call('SET', KEYS[i], 'R' .. record, 'PX', retention)
            results[i] = 1
          else
            results[i] = 0
          end
        end
        return results
        """
    )

    /// ARGV: 1 token. Returns 1, or 0 when the claim is not the token's.
    static let release = RedisScript(
        """
        \(ownsClaim)
        if not owns(KEYS[1], ARGV[1]) then return 0 end
        redis.call('DEL', KEYS[1])
        return 1
        """
    )
}
