import Logging
import NIOPosix
import ServiceLifecycle
import SluiceCore

/// Re-resolves target names every `dns_refresh` (SPEC §7) as one service: when a name's
/// addresses change, the upstream runtimes are made again on the snapshot in force — added
/// addresses join, removed ones drain (their calls in flight finish; idle connections close),
/// every unchanged target keeps its connections and health. A name that resolves to nothing
/// on a refresh keeps its last addresses (a DNS outage does not empty a pool).
struct TargetNameRefresher: Service {
    let pool: UpstreamPool
    let snapshots: SnapshotHolder<GatewaySnapshot>
    let logger: Logger

    func run() async throws {
        while await pauseUnlessShuttingDown(for: .milliseconds(250)) {
            for name in pool.namesDue(in: snapshots.load().policy, now: .now) {
                let resolver = pool.resolver
                guard let addresses = try? await NIOThreadPool.singleton.runIfActive({ resolver(name) }) else { continue }
                guard !addresses.isEmpty else {
                    _ = pool.resolved(name, to: pool.lastAddresses(of: name), at: .now)
                    logger.warning("upstream target name resolved to nothing; its last addresses stay", metadata: ["name": .string(name)])
                    continue
                }
                guard pool.resolved(name, to: addresses, at: .now) else { continue }
                logger.notice(
                    "upstream target name resolved to other addresses", metadata: ["name": .string(name), "addresses": .array(addresses.map { .string($0) })]
                )
                do {
                    try snapshots.update { current throws(PolicyErrors) in current.replacingUpstreams(try pool.runtimes(for: current.policy)) }
                } catch {
                    logger.error("upstream targets could not be set up again", metadata: ["problems": .string("\(error.problems)")])
                }
            }
        }
    }
}
