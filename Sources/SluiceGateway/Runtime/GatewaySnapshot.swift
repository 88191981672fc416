import Foundation
import NIOSSL
import SluiceCore

/// Everything one policy load produces that requests read: the compiled rules, the TLS
/// context for new connections and the upstream clients. Swapped as a whole on reload.
final class GatewaySnapshot: Sendable {
    let rules: GatewayRules
    /// Nil when the policy has no https listener.
    let tlsContext: NIOSSLContext?
    let upstreams: [String: UpstreamClient]

    var policy: PolicySet { rules.policy }

    private init(rules: GatewayRules, tlsContext: NIOSSLContext?, upstreams: [String: UpstreamClient]) {
        self.rules = rules
        self.tlsContext = tlsContext
        self.upstreams = upstreams
    }

    /// Builds a snapshot; TLS material that cannot be loaded is a policy problem.
    static func make(_ policy: PolicySet, pool: UpstreamPool) throws(PolicyErrors) -> GatewaySnapshot {
        let tlsContext = try policy.gateway.tls.map { tls throws(PolicyErrors) in try makeTLSContext(tls) }
        return GatewaySnapshot(rules: GatewayRules(policy), tlsContext: tlsContext, upstreams: pool.clients(for: policy))
    }

    /// TLS 1.2+, ALPN h2 and http/1.1; with a client CA, client certificates are requested and,
    /// when presented, verified (a partner may still use an API key instead).
    static func makeTLSContext(_ tls: GatewayPolicy.TLS) throws(PolicyErrors) -> NIOSSLContext {
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(tls.certificatePath).map { NIOSSLCertificateSource.certificate($0) }
            let key = try NIOSSLPrivateKey(file: tls.keyPath, format: .pem)
            var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
            configuration.minimumTLSVersion = .tlsv12
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
