/// Idempotency keys in Lua, on one key per partner and idempotency key
/// (`PREFIX:{p:PARTNER}:idem:KEY`, hash-tagged like the admission keys). The value is
/// `C<expires ms>:<token>` while a request holds the key, the encoded record once it finished
/// (`IdempotencyRecord.encoded()`, which never starts with `C`; older gateways wrote `R<record>`). Every
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

    /// `claim(key, token, lease ms, now)`: claims a key for a request. Returns 1 (claimed; an
    /// integer is the cheapest reply to read), `P<ms>` (held by a running request for up to ms
    /// more) or the record. The claim value's start is made once per lease and call (a batch's
    /// requests mostly share their route).
    private static let claim = """
        local claimstarts = {}
        local function claim(key, token, lease, now)
          local start = claimstarts[lease]
          if not start then
            start = 'C' .. (now + tonumber(lease)) .. ':'
            claimstarts[lease] = start
          end
          local value = start .. token
          if redis.call('SET', key, value, 'NX', 'PX', lease) then return 1 end
          local old = redis.call('GET', key)
          if old and string.sub(old, 1, 1) ~= 'C' then return old end
          if old then
            local expires = tonumber(string.sub(old, 2, string.find(old, ':', 2, true) - 1))
            if expires > now then return 'P' .. (expires - now) end
          end
          redis.call('SET', key, value, 'PX', lease)
          return 1
        end
        """

    /// One partner's records and claims of one event-loop tick: records first (so a claim in the
    /// same batch sees them), then claims in order. Its arguments start after ARGV[ao] and its
    /// keys after KEYS[ko] (Lua locals set before); it appends its results to `results`.
    /// Keys: the records' keys, then the claims' keys. Arguments: now ms ('' = Redis TIME), the
    /// number of records, then per record its token, record and retention ms, then per claim its
    /// token and lease ms. Results: per record 1 (recorded) or 0 (the claim is no longer the
    /// token's), then per claim what `claim` returns.
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
          local old = redis.call('SET', key, record, 'XX', 'PX', retention, 'GET')
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
          local c = i - records - 1
          results[#results + 1] = claim(KEYS[ko + i], ARGV[base + 2 * c], ARGV[base + 2 * c + 1], now)
        end
        """

    /// The records and claims alone, in one atomic step: keys and arguments as in `steps`.
    static let batch = RedisScript(
        """
        local ao, ko, results = 0, 0, {}
        \(claim)
        \(steps)
        return results
        """
    )

    /// Admission decisions (`AdmissionScripts`) with a partner's pending records and claims riding along.
    static let admitAndBatch = admitting(claims: false, batch: true)
    /// Admission decisions that claim the idempotency keys of the admitted requests.
    static let admitClaiming = admitting(claims: true, batch: false)
    /// Both of the above.
    static let admitClaimingAndBatch = admitting(claims: true, batch: true)

    /// A partner's admission decisions and idempotency work in one atomic step. KEYS 1–2 and the
    /// first `argc` arguments are `AdmissionScripts.decisions(claiming: claims)`'s: with `claims`,
    /// each request's arguments end in a key to claim when it is admitted (token, '' for none, and
    /// lease ms) and the keys to claim are KEYS 3… in request order. With `batch`, the pending
    /// records and claims follow (keys after those, arguments as in `steps`) and the last argument
    /// is `argc`. Returns the decisions string, then per request with a claim token what `claim`
    /// returns (0 when the request was not admitted), then the batch's results.
    private static func admitting(claims: Bool, batch: Bool) -> RedisScript {
        RedisScript(
            """
            local argc = \(batch ? "tonumber(ARGV[#ARGV])" : "#ARGV")
            local claims, ck = {}, 2
            \(claim)
            local function decide()
            \(AdmissionScripts.decisions(claiming: claims))
            end
            local results = { decide() }
            for i = 1, #claims do results[#results + 1] = claims[i] end
            \(batch ? "local ao, ko = argc, ck\n" + steps : "")
            return results
            """
        )
    }

    /// Every script of this kind, for the client to load.
    static let all = [batch, admitAndBatch, admitClaiming, admitClaimingAndBatch, release, renew]

    /// Extends claims that are still their tokens'. KEYS: the claimed keys. ARGV: now ms ('' =
    /// Redis TIME), then per key its token and lease ms. Returns how many were extended.
    static let renew = RedisScript(
        """
        \(AdmissionScripts.now(argument: 1))
        local renewed = 0
        for i = 1, #KEYS do
          local token, lease = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
          local value = redis.call('GET', KEYS[i])
          if value and string.sub(value, 1, 1) == 'C' and string.sub(value, string.find(value, ':', 2, true) + 1) == token then
            redis.call('SET', KEYS[i], 'C' .. (now + lease) .. ':' .. token, 'PX', lease)
            renewed = renewed + 1
          end
        end
        return renewed
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
