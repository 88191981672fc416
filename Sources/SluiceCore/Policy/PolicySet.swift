import Crypto
import Foundation
import Yams

/// The text of one policy file, named relative to the policy folder (`partners/acme.yaml`).
public struct PolicySource: Sendable, Equatable {
    public var relativePath: String
    public var text: String

    public init(relativePath: String, text: String) {
        self.relativePath = relativePath
        self.text = text
    }
}

/// Every policy file, parsed and cross-checked: the immutable value a gateway serves from.
public struct PolicySet: Sendable, Equatable {
    public var gateway: GatewayPolicy
    public var upstreams: [String: UpstreamPolicy]
    public var routes: RoutesPolicy
    public var plans: [String: LimitSet]
    /// Sorted by id.
    public var partners: [PartnerPolicy]
    /// Short hash of all sources: tells two loaded sets apart (`GET /admin/policies`).
    public var versionHash: String

    /// The effective limits of a partner: its plan with its overrides applied.
    public func limits(for partner: PartnerPolicy) -> LimitSet {
        (plans[partner.plan] ?? LimitSet()).applying(partner.overrides)
    }
}

extension PolicySet {
    /// The files every policy folder has, besides `partners/*.yaml`.
    public static let requiredFileNames = ["gateway.yaml", "upstreams.yaml", "routes.yaml", "plans.yaml"]

    /// Parses and validates `sources`. Problems name files as `directory/relativePath`.
    ///
    /// - Parameters:
    ///   - directory: The policy folder as the user named it; relative TLS paths resolve against it.
    ///   - environment: Values for `env:NAME` secrets.
    ///   - fileExists: Checks that TLS files named by gateway.yaml are readable.
    /// - Throws: `PolicyErrors` with every problem found.
    public static func parse(
        sources: [PolicySource],
        directory: String,
        environment: [String: String],
        fileExists: (String) -> Bool
    ) throws(PolicyErrors) -> PolicySet {
        let diagnostics = Diagnostics()
        func display(_ relativePath: String) -> String {
            directory.isEmpty ? relativePath : (directory.hasSuffix("/") ? directory : directory + "/") + relativePath
        }
        func root(_ relativePath: String) -> YAMLValue? {
            let file = display(relativePath)
            guard let source = sources.first(where: { $0.relativePath == relativePath }) else {
                diagnostics.report(SourceLocation(file: file, line: 1, column: 1), "required policy file is missing")
                return nil
            }
            return compose(source, file: file, diagnostics: diagnostics, environment: environment)
        }

        let gatewayRoot = root("gateway.yaml")
        let gateway = gatewayRoot.flatMap { GatewayPolicy.read($0, directory: directory.isEmpty ? "." : directory) }
        if let gateway, let gatewayRoot { checkFiles(gateway, gatewayRoot, fileExists) }
        let upstreamsRead = root("upstreams.yaml").map(UpstreamPolicy.readAll)
        let upstreams = upstreamsRead?.upstreams ?? [:]
        let routesRead = root("routes.yaml").map { RoutesPolicy.read($0, upstreams: upstreamsRead?.declared) }
        let routes = routesRead?.routes
        let plansRead = root("plans.yaml").map(LimitSet.readPlans)
        let plans = plansRead?.plans ?? [:]

        let partnerSources = sources.filter { $0.relativePath.hasPrefix("partners/") }.sorted { $0.relativePath < $1.relativePath }
        var partners: [PartnerPolicy] = []
        var partnerFiles: [String: String] = [:]
        var keyOwners: [SHA256Digest: String] = [:]
        for source in partnerSources {
            let file = display(source.relativePath)
            guard let partnerRoot = compose(source, file: file, diagnostics: diagnostics, environment: environment),
                let (partner, references) = PartnerPolicy.read(partnerRoot)
            else { continue }
            if let other = partnerFiles[partner.id] {
                partnerRoot.report("partner id '\(partner.id)' is already used by \(other)")
                continue
            }
            partnerFiles[partner.id] = file
            if let declared = plansRead?.declared, !declared.contains(partner.plan) {
                references.plan.report("partner '\(partner.id)' names unknown plan '\(partner.plan)'")
            }
            if let versionNames = routesRead?.declaredVersions {
                for (version, value) in zip(partner.versions, references.versions) where !versionNames.contains(version) {
                    value.report("partner '\(partner.id)' names unknown version '\(version)'")
                }
            }
            for (key, value) in zip(partner.keys, references.keys) {
                if let owner = keyOwners[key.sha256] {
                    value.report("key '\(key.id)' of partner '\(partner.id)' has the same sha256 as a key of partner '\(owner)'")
                } else {
                    keyOwners[key.sha256] = partner.id
                }
            }
            partners.append(partner)
        }

        for route in routes?.routes ?? [] {
            guard let canary = route.canary else { continue }
            for (partner, location) in zip(canary.partners, canary.partnerLocations) where partnerFiles[partner] == nil {
                diagnostics.report(location, "route '\(route.id)' canary names unknown partner '\(partner)'")
            }
        }
        guard diagnostics.problems.isEmpty, let gateway, let routes else {
            throw PolicyErrors(diagnostics.problems)
        }
        return PolicySet(
            gateway: gateway,
            upstreams: upstreams,
            routes: routes,
            plans: plans,
            partners: partners.sorted { $0.id < $1.id },
            versionHash: hash(sources)
        )
    }

    private static func compose(_ source: PolicySource, file: String, diagnostics: Diagnostics, environment: [String: String]) -> YAMLValue? {
        do {
            guard let node = try Yams.compose(yaml: source.text) else {
                diagnostics.report(SourceLocation(file: file, line: 1, column: 1), "file is empty")
                return nil
            }
            return YAMLValue(node: node, file: file, diagnostics: diagnostics, environment: environment)
        } catch let error as YamlError {
            let (line, column, message) = describe(error)
            diagnostics.report(SourceLocation(file: file, line: line, column: column), message)
            return nil
        } catch {
            diagnostics.report(SourceLocation(file: file, line: 1, column: 1), "cannot read YAML: \(error)")
            return nil
        }
    }

    private static func describe(_ error: YamlError) -> (line: Int, column: Int, message: String) {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return (mark.line, mark.column, "invalid YAML: \(problem)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.map { "'\($0)'" }.joined(separator: ", ")
            return (context.mark.line, context.mark.column, "duplicate key \(keys) in a mapping")
        case .reader(let problem, _, _, _):
            return (1, 1, "cannot read file: \(problem)")
        default:
            return (1, 1, "invalid YAML: \(error)")
        }
    }

    private static func checkFiles(_ gateway: GatewayPolicy, _ root: YAMLValue, _ fileExists: (String) -> Bool) {
        guard case .mapping(let mapping) = root.node else { return }
        func check(_ section: String, _ files: [(key: String, path: String?)]) {
            guard let sectionNode = mapping[Node(section)], case .mapping(let sectionMapping) = sectionNode else { return }
            for (key, path) in files {
                guard let path, !fileExists(path), let node = sectionMapping[Node(key)] else { continue }
                root.child(node).report("\(section).\(key): cannot read file \(path)")
            }
        }
        if let tls = gateway.tls {
            check("tls", [("certificate", tls.certificatePath), ("key", tls.keyPath), ("client_ca", tls.clientCAPath)])
        }
        check("store", [("tls_ca", gateway.store.tlsCAPath)])
    }

    private static func hash(_ sources: [PolicySource]) -> String {
        var hasher = SHA256()
        for source in sources.sorted(by: { $0.relativePath < $1.relativePath }) {
            hasher.update(data: Data(source.relativePath.utf8))
            hasher.update(data: Data([0]))
            hasher.update(data: Data(source.text.utf8))
            hasher.update(data: Data([0]))
        }
        return hasher.finalize().prefix(8).map { String(format: "%02x", $0) }.joined()
    }
}

/// Reads a policy folder from disk.
public enum PolicyLoader {
    /// Loads and validates every file under `directory`.
    public static func load(
        directory: String,
        environment: [String: String]
    ) throws(PolicyErrors) -> PolicySet {
        let sources = try readSources(directory: directory)
        return try PolicySet.parse(
            sources: sources,
            directory: directory,
            environment: environment,
            fileExists: { FileManager.default.isReadableFile(atPath: $0) }
        )
    }

    /// The YAML files of a policy folder: the four top-level files and `partners/*.yaml`.
    public static func readSources(directory: String) throws(PolicyErrors) -> [PolicySource] {
        let base = URL(fileURLWithPath: directory)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: base.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw PolicyErrors([PolicyProblem(SourceLocation(file: directory, line: 1, column: 1), "policy folder does not exist")])
        }
        var sources: [PolicySource] = []
        var problems: [PolicyProblem] = []
        func read(_ relativePath: String) {
            let url = base.appendingPathComponent(relativePath)
            guard FileManager.default.fileExists(atPath: url.path) else { return }
            let file = (directory.hasSuffix("/") ? directory : directory + "/") + relativePath
            guard let data = FileManager.default.contents(atPath: url.path) else {
                problems.append(PolicyProblem(SourceLocation(file: file, line: 1, column: 1), "cannot read file"))
                return
            }
            guard data.count <= 4 << 20 else {
                problems.append(PolicyProblem(SourceLocation(file: file, line: 1, column: 1), "file is larger than 4MiB"))
                return
            }
            guard let text = String(data: data, encoding: .utf8) else {
                problems.append(PolicyProblem(SourceLocation(file: file, line: 1, column: 1), "file is not UTF-8 text"))
                return
            }
            sources.append(PolicySource(relativePath: relativePath, text: text))
        }
        PolicySet.requiredFileNames.forEach(read)
        let partnerNames = (try? FileManager.default.contentsOfDirectory(atPath: base.appendingPathComponent("partners").path)) ?? []
        for name in partnerNames.sorted() where name.hasSuffix(".yaml") || name.hasSuffix(".yml") {
            read("partners/\(name)")
        }
        guard problems.isEmpty else { throw PolicyErrors(problems) }
        return sources
    }
}
