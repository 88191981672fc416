import Crypto
public import Foundation
public import NIOSSL
import SwiftASN1
import X509

/// A throwaway CA with a server certificate for localhost/127.0.0.1 and partner client
/// certificates, written as PEM files into `directory`.
public struct TestPKI: Sendable {
    public let directory: URL
    public let caCertificatePEM: String

    public var caPath: String { directory.appendingPathComponent("ca.crt").path }
    public var serverCertificatePath: String { directory.appendingPathComponent("server.crt").path }
    public var serverKeyPath: String { directory.appendingPathComponent("server.key").path }
    public var clientCertificatePath: String { directory.appendingPathComponent("client.crt").path }
    public var clientKeyPath: String { directory.appendingPathComponent("client.key").path }
    /// A client certificate with the right subject, issued by a CA the gateway does not trust.
    public var strangerCertificatePath: String { directory.appendingPathComponent("stranger.crt").path }
    public var strangerKeyPath: String { directory.appendingPathComponent("stranger.key").path }

    public init(directory: URL) throws {
        self.directory = directory
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let now = Date()
        let caKey = P256.Signing.PrivateKey()
        let caName = try DistinguishedName { CommonName("Sluice Test CA") }
        let ca = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(caKey.publicKey),
            notValidBefore: now - 3_600, notValidAfter: now + 86_400, issuer: caName, subject: caName,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: .init(caKey)
        )
        caCertificatePEM = try ca.serializeAsPEM().pemString
        try caCertificatePEM.write(to: URL(fileURLWithPath: caPath), atomically: true, encoding: .utf8)

        let serverKey = P256.Signing.PrivateKey()
        let server = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(serverKey.publicKey),
            notValidBefore: now - 3_600, notValidAfter: now + 86_400, issuer: caName,
            subject: try DistinguishedName { CommonName("localhost") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                SubjectAlternativeNames([.dnsName("localhost"), .ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1]))])
                try ExtendedKeyUsage([.serverAuth])
            },
            issuerPrivateKey: .init(caKey)
        )
        try write(server, serverKey, serverCertificatePath, serverKeyPath)
        try makeClient(issuer: caName, issuerKey: caKey, certificatePath: clientCertificatePath, keyPath: clientKeyPath, now: now)

        let strangerCAKey = P256.Signing.PrivateKey()
        try makeClient(
            issuer: try DistinguishedName { CommonName("Stranger CA") }, issuerKey: strangerCAKey,
            certificatePath: strangerCertificatePath, keyPath: strangerKeyPath, now: now
        )
    }

    /// Client TLS configuration trusting the test CA, optionally presenting a client certificate.
    public func clientTLS(certificate: String? = nil, key: String? = nil) throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates([try NIOSSLCertificate(bytes: Array(caCertificatePEM.utf8), format: .pem)])
        if let certificate, let key {
            configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
            configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
        }
        return configuration
    }

    /// A self-signed server certificate for localhost valid until `notAfter` (whole seconds),
    /// written into the PKI's folder as `NAME.crt` and `NAME.key` (a renewal, as far as the
    /// gateway can tell).
    public func selfSignedServerCertificate(_ name: String, notAfter: Date) throws -> (certificate: String, key: String) {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName { CommonName("localhost") }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey), notValidBefore: Date() - 3_600, notValidAfter: notAfter,
            issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions { Critical(BasicConstraints.notCertificateAuthority) }, issuerPrivateKey: .init(key)
        )
        let paths = (directory.appendingPathComponent("\(name).crt").path, directory.appendingPathComponent("\(name).key").path)
        try write(certificate, key, paths.0, paths.1)
        return paths
    }

    private func makeClient(issuer: DistinguishedName, issuerKey: P256.Signing.PrivateKey, certificatePath: String, keyPath: String, now: Date) throws {
        let key = P256.Signing.PrivateKey()
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: now - 3_600, notValidAfter: now + 86_400, issuer: issuer,
            subject: try DistinguishedName {
                OrganizationName("ACME Manufacturing")
                CommonName("acme-erp")
            },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                try ExtendedKeyUsage([.clientAuth])
            },
            issuerPrivateKey: .init(issuerKey)
        )
        try write(certificate, key, certificatePath, keyPath)
    }

    private func write(_ certificate: Certificate, _ key: P256.Signing.PrivateKey, _ certificatePath: String, _ keyPath: String) throws {
        try certificate.serializeAsPEM().pemString.write(to: URL(fileURLWithPath: certificatePath), atomically: true, encoding: .utf8)
        try key.pemRepresentation.write(to: URL(fileURLWithPath: keyPath), atomically: true, encoding: .utf8)
    }
}
