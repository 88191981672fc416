import Foundation
@testable import SluiceCore

/// The valid policy set under `Fixtures/valid`, optionally with the files of one
/// `Fixtures/errors/NAME` folder laid over it.
enum PolicyFixtures {
    static let root = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    static let webhookSecret = "whsec_" + Data((0..<32).map { UInt8($0) }).base64EncodedString()
    static let environment = ["ACME_WEBHOOK_SECRET": webhookSecret]

    static func sources(overlay: String? = nil) -> [PolicySource] {
        var byPath: [String: String] = [:]
        func add(_ directory: URL) {
            let enumerator = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: nil)!
            for case let url as URL in enumerator where url.pathExtension == "yaml" {
                let relative = String(url.standardizedFileURL.path.dropFirst(directory.standardizedFileURL.path.count + 1))
                byPath[relative] = try! String(contentsOf: url, encoding: .utf8)
            }
        }
        add(root.appendingPathComponent("valid"))
        if let overlay { add(root.appendingPathComponent("errors/\(overlay)")) }
        return byPath.map { PolicySource(relativePath: $0.key, text: $0.value) }
    }

    static func load(
        _ sources: [PolicySource] = sources(), environment: [String: String] = environment
    ) throws(PolicyErrors) -> PolicySet {
        try PolicySet.parse(sources: sources, directory: "policies", environment: environment, fileExists: { _ in true })
    }

    /// The problems of loading with `overlay`, as `sluice policies check` prints them.
    static func problems(_ overlay: String) -> [String] {
        do {
            _ = try load(sources(overlay: overlay))
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }
}
