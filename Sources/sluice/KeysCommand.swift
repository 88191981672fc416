import ArgumentParser
import Foundation
import SluiceCore

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage partner API keys.",
        subcommands: [Generate.self]
    )

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a new random API key once, and the sha256 line to paste into the partner file."
        )

        @Option(help: "The partner the key is for.")
        var partner: String

        func validate() throws {
            guard APIKeyFactory.isValidPartnerID(partner) else {
                throw ValidationError("partner id '\(partner)' must be 1-64 characters of a-z, A-Z, 0-9, '-' and '_'")
            }
        }

        func run() throws {
            let key = APIKeyFactory.makeKey()
            print("API key for \(partner) (shown once; hand it over securely, it cannot be recovered):")
            print(key.secret)
            print("")
            print("Add this line to the keys list of partners/\(partner).yaml:")
            print("  - { id: \(key.id), sha256: \"\(SHA256Digest.of(key.secret).hex)\" }")
        }
    }
}
