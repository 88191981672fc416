public import Foundation

/// One partner from `partners/*.yaml`.
public struct PartnerPolicy: Sendable, Equatable {
    public struct Key: Sendable, Equatable {
        public var id: String
        public var sha256: SHA256Digest
    }

    public struct Webhook: Sendable, Equatable {
        public var url: URL
        /// The `whsec_…` signing secret.
        public var secret: WebhookSecret
        /// Allow loopback, private, link-local and metadata addresses (on-premise receivers).
        public var allowPrivateAddresses: Bool
    }

    public var id: String
    public var name: String
    public var plan: String
    /// Allowed versions; the first is the pinned default. Empty = every version, default_version pinned.
    public var versions: [String]
    public var keys: [Key]
    /// Client certificate subjects (RFC 4514, e.g. `CN=erp,O=ACME`) that authenticate this partner.
    public var clientCertificateSubjects: [String]
    public var overrides: LimitSet
    public var webhook: Webhook?
    public var location: SourceLocation

    public func allows(version: String) -> Bool {
        versions.isEmpty || versions.contains(version)
    }
}

extension PartnerPolicy {
    /// Reads a partner file. References to plans and versions are checked by `PolicySet`.
    static func read(_ root: YAMLValue) -> (PartnerPolicy, references: PartnerReferences)? {
        guard let map = root.mapping("a partner file") else { return nil }
        let idValue = map.required("id")
        let id = idValue?.string("partner id")
        if let id, let idValue, !PolicyNames.isValid(id) { idValue.report(PolicyNames.problem("partner id", id)) }
        let context = "partner '\(id ?? "?")'"
        let name = map.required("name")?.string("\(context) name")
        let planValue = map.required("plan")
        let plan = planValue?.string("\(context) plan")
        let versions = map.optional("versions")?.stringList("\(context) versions") ?? []
        let keysValue = map.optional("keys")
        let keys = readKeys(keysValue, context)
        let subjects = map.optional("client_cert_subjects")?.stringList("\(context) client_cert_subjects") ?? []
        let overrides = map.optional("overrides").flatMap { LimitSet.read($0, "\(context) overrides") }
        let webhook = map.optional("webhook").flatMap { readWebhook($0, context) }
        map.finish()

        var seenVersions: Set<String> = []
        for (version, value) in versions where !seenVersions.insert(version).inserted {
            value.report("\(context) lists version '\(version)' twice")
        }
        let listsKeys = keysValue.map { if case .sequence(let items) = $0.node { !items.isEmpty } else { true } } ?? false
        if !listsKeys && subjects.isEmpty {
            map.value.report("\(context) has no keys and no client_cert_subjects, so it can never authenticate")
        }
        guard let id, PolicyNames.isValid(id), let name, let plan, let planValue else { return nil }
        let partner = PartnerPolicy(
            id: id,
            name: name,
            plan: plan,
            versions: versions.map(\.0),
            keys: keys.map(\.0),
            clientCertificateSubjects: subjects.map(\.0),
            overrides: overrides ?? LimitSet(),
            webhook: webhook,
            location: root.location
        )
        return (partner, PartnerReferences(plan: planValue, versions: versions.map(\.1), keys: keys.map(\.1)))
    }

    private static func readKeys(_ value: YAMLValue?, _ context: String) -> [(Key, YAMLValue)] {
        guard let items = value?.sequence("\(context) keys") else { return [] }
        var ids: Set<String> = []
        return items.compactMap { item in
            guard let map = item.mapping("a key of \(context)") else { return nil }
            let id = map.required("id")?.string("key id")
            let hashValue = map.required("sha256")
            let hash = hashValue.flatMap { SHA256Digest.read($0, "key sha256") }
            map.finish()
            guard let id, let hash, let hashValue else { return nil }
            if !ids.insert(id).inserted { item.report("\(context) has two keys with id '\(id)'") }
            return (Key(id: id, sha256: hash), hashValue)
        }
    }

    private static func readWebhook(_ value: YAMLValue, _ context: String) -> Webhook? {
        let context = "\(context) webhook"
        guard let map = value.mapping(context) else { return nil }
        let urlValue = map.required("url")
        let urlText = urlValue?.string("\(context) url")
        let secretValue = map.required("secret")
        let secret = secretValue?.secret("\(context) secret")
        let allowPrivate = map.optional("allow_private_addresses")?.bool("\(context) allow_private_addresses") ?? false
        map.finish()

        var url: URL?
        if let urlText, let urlValue {
            let components = URLComponents(string: urlText)
            let scheme = components?.scheme
            if components?.host?.isEmpty != false || (scheme != "https" && scheme != "http") {
                urlValue.report("\(context) url must be an https:// URL, got '\(urlText)'")
            } else if scheme == "http" && !allowPrivate {
                urlValue.report("\(context) url must use https (plain http only with allow_private_addresses: true)")
            } else {
                url = components?.url
            }
        }
        var parsedSecret: WebhookSecret?
        if let secret, let secretValue {
            if let valid = try? WebhookSecret(secret) {
                parsedSecret = valid
            } else {
                secretValue.report("\(context) secret must be 'whsec_' followed by base64 of 24 to 64 bytes (Standard Webhooks)")
            }
        }
        guard let url, let parsedSecret else { return nil }
        return Webhook(url: url, secret: parsedSecret, allowPrivateAddresses: allowPrivate)
    }
}

/// Where a partner file names other things, for cross-reference problems.
struct PartnerReferences {
    let plan: YAMLValue
    let versions: [YAMLValue]
    let keys: [YAMLValue]
}
