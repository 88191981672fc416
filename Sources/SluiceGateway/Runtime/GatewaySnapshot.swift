import Foundation
import Logging
import NIOSSL
import SluiceCore
import SluiceStore

/// Builds snapshots from policy sets, reusing upstream clients and store backends whose
/// settings did not change.
struct SnapshotFactory: Sendable {
    let pool: UpstreamPool
    let stores: StoreRegistry
    let metrics: GatewayMetrics
    let logger: Logger
    let leaseDuration: Duration
    /// How much longer than its route's timeout an idempotency claim lasts.
    let claimLeaseMargin: Duration
    /// This instance's name in task histories.
    let instance: String
    /// Wakes this instance's task workers.
    let wakeWorkers: @Sendable () -> Void
    /// The clock task histories use (the store's).
    let clock: EpochClock
    /// The instance's id generator (concurrency lease tokens).
    let identifiers: IdentifierGenerator

    /// Builds a snapshot; TLS material or a store that cannot be set up is a policy problem.
    func make(_ policy: PolicySet) throws(PolicyErrors) -> GatewaySnapshot {
        let tlsContext = try policy.gateway.tls.map { tls throws(PolicyErrors) in try GatewaySnapshot.makeTLSContext(tls) }
        let backend = try stores.backend(for: policy)
        let admission = AdmissionControl(
            backend: backend,
            mode: policy.gateway.store.onRedisFailure,
            instances: policy.gateway.store.expectedInstances,
            leaseDuration: leaseDuration,
            identifiers: identifiers,
            metrics: metrics,
            logger: logger
        )
        let idempotency = IdempotencyControl(
            store: backend.store, retention: policy.gateway.idempotency.retention, leaseMargin: claimLeaseMargin, held: backend.claims,
            metrics: metrics, logger: logger
        )
        let tasks = TaskControl(
            store: backend.store, retention: policy.gateway.tasks.retention, instance: instance, wakeWorkers: wakeWorkers, clock: clock,
            metrics: metrics, logger: logger
        )
        let caching = ResponseCaching(store: backend.store, fills: CacheFills(), clock: clock, metrics: metrics, logger: logger)
        let upstreams = try pool.runtimes(for: policy)
        metrics.policyApplied(policy, certificateExpiries: policy.gateway.tls.map(GatewaySnapshot.certificateExpiries) ?? [:])
        return GatewaySnapshot(
            rules: GatewayRules(policy), tlsContext: tlsContext, upstreams: upstreams, admission: admission, idempotency: idempotency, tasks: tasks,
            caching: caching
        )
    }
}

/// Everything one policy load produces that requests read: the compiled rules, the TLS
/// context for new connections and the upstream runtimes. Swapped as a whole on reload.
final class GatewaySnapshot: Sendable {
    let rules: GatewayRules
    /// Nil when the policy has no https listener.
    let tlsContext: NIOSSLContext?
    let upstreams: [String: UpstreamRuntime]
    let admission: AdmissionControl
    let idempotency: IdempotencyControl
    let tasks: TaskControl
    let caching: ResponseCaching

    var policy: PolicySet { rules.policy }
    /// The store the policies name (shared by admission, idempotency, tasks and usage).
    var store: any SharedStore { tasks.store }

    fileprivate init(
        rules: GatewayRules, tlsContext: NIOSSLContext?, upstreams: [String: UpstreamRuntime], admission: AdmissionControl,
        idempotency: IdempotencyControl, tasks: TaskControl, caching: ResponseCaching
    ) {
        self.rules = rules
        self.tlsContext = tlsContext
        self.upstreams = upstreams
        self.admission = admission
        self.idempotency = idempotency
        self.tasks = tasks
        self.caching = caching
    }

    /// The same snapshot with other upstream runtimes (target names resolved again); the
    /// rules, and with them a canary's abort, stay.
    func replacingUpstreams(_ upstreams: [String: UpstreamRuntime]) -> GatewaySnapshot {
        GatewaySnapshot(rules: rules, tlsContext: tlsContext, upstreams: upstreams, admission: admission, idempotency: idempotency, tasks: tasks, caching: caching)
    }

    /// What TLS 1.2 offers (SPEC §3): ECDHE key exchange with AEAD ciphers only — no CBC
    /// (LUCKY13), no RSA key exchange. TLS 1.3's suites are fixed by BoringSSL (all AEAD).
    static let tls12CipherSuites: [NIOTLSCipher] = [
        .TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, .TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        .TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, .TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        .TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, .TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]

    /// When the partner listener's certificate (`https`) and the earliest of its client CA's
    /// certificates (`https-client-ca`) stop being valid, in seconds since the epoch
    /// (`sluice_tls_certificate_expiry_timestamp_seconds{listener}`). Files that cannot be read
    /// are left out (the TLS context reports them).
    static func certificateExpiries(_ tls: GatewayPolicy.TLS) -> [String: Double] {
        var expiries: [String: Double] = [:]
        if let leaf = try? NIOSSLCertificate.fromPEMFile(tls.certificatePath).first { expiries["https"] = Double(leaf.notValidAfter) }
        if let path = tls.clientCAPath, let earliest = (try? NIOSSLCertificate.fromPEMFile(path))?.map(\.notValidAfter).min() {
            expiries["https-client-ca"] = Double(earliest)
        }
        return expiries
    }

    /// TLS 1.2+ (AEAD suites only), ALPN h2 and http/1.1; with a client CA, client certificates are requested and,
    /// when presented, verified (a partner may still use an API key instead).
    static func makeTLSContext(_ tls: GatewayPolicy.TLS) throws(PolicyErrors) -> NIOSSLContext {
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(tls.certificatePath).map { NIOSSLCertificateSource.certificate($0) }
            let key = try NIOSSLPrivateKey(file: tls.keyPath, format: .pem)
            var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
            configuration.minimumTLSVersion = .tlsv12
            configuration.cipherSuiteValues = tls12CipherSuites
            configuration.applicationProtocols = ["h2", "http/1.1"]
            if let clientCA = tls.clientCAPath {
                configuration.trustRoots = .file(clientCA)
                configuration.certificateVerification = .optionalVerification
                configuration.sendCANameList = true
            }
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw PolicyErrors([PolicyProblem(tls.location, "tls: cannot load certificate, key or client CA: \(error)")])
        }
    }
}
