import SluiceCore

/// The partner of the last API key one connection presented. A partner sends the same key on
/// every request of a keep-alive connection (or HTTP/2 stream of it), so the key is hashed and
/// looked up once per connection and policy load, not per request. Only the connection's own
/// earlier key is compared with, in constant time, so the comparison reveals nothing.
final class KeyCache {
    private var last: (key: Substring, rules: GatewayRules, partner: Partner?)?

    func partner(forKey key: Substring, rules: GatewayRules) -> Partner? {
        if let last, last.rules === rules, ConstantTime.equals(last.key, key) { return last.partner }
        let partner = rules.partner(forKey: key)
        last = (key, rules, partner)
        return partner
    }
}
