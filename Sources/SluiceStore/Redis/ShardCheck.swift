/// A read-only script that says which of several shard keys have work, built from one Lua
/// function `hasWork(key)` in two forms:
/// - `declared`: every key in KEYS (one Redis or Sentinel: all shards in one call; on a cluster,
///   one shard per call);
/// - `onNode`: the keys one cluster primary serves, in one call (Redis ≥ 7). KEYS[1] is the first
///   of them, which routes the call; the others follow the script's own `arguments` in ARGV,
///   undeclared, so their different slots are no `CROSSSLOT` error (`allow-cross-slot-keys`).
///   A key the node cannot read (its slot moved or is moving) counts as having work: the take
///   that follows goes by the normal routing and its redirects.
///
/// Both answer the positions (from 1) of the keys with work.
struct ShardCheck: Sendable {
    let declared: RedisScript
    let onNode: RedisScript

    /// - Parameters:
    ///   - arguments: How many ARGV entries the script itself takes (before `onNode`'s keys).
    ///   - hasWork: Lua that defines `local function hasWork(key)`.
    init(arguments: Int, hasWork: String) {
        declared = RedisScript(
            """
            \(hasWork)
            local ready = {}
            for i, key in ipairs(KEYS) do
              if hasWork(key) then ready[#ready + 1] = i end
            end
            return ready
            """
        )
        onNode = RedisScript(
            """
            #!lua flags=no-writes,allow-cross-slot-keys
            \(hasWork)
            local keys = {KEYS[1]}
            for i = \(arguments + 1), #ARGV do keys[#keys + 1] = ARGV[i] end
            local ready = {}
            for i, key in ipairs(keys) do
              local read, work = pcall(hasWork, key)
              if not read or work then ready[#ready + 1] = i end
            end
            return ready
            """
        )
    }
}
