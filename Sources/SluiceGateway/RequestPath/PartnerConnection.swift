import NIOCore
import NIOSSL
import SluiceCore
import X509

/// What every request on one partner connection shares (an HTTP/1.1 connection's requests, or
/// an HTTP/2 connection's streams): computed once per connection, used on its event loop.
final class PartnerConnection {
    /// `https` or `http`: the listener the connection came in on.
    let scheme: String
    /// The caller's IP address.
    let clientAddress: String?
    /// The same, parsed (for `listen.trusted_proxies`).
    private let peer: IPAddress?
    let watchdog: ConnectionWatchdog
    /// The partner of the API key this connection presented last.
    let keys = KeyCache()
    private let channel: any Channel
    private var subject: String??

    init(channel: any Channel, scheme: String, watchdog: ConnectionWatchdog) {
        self.channel = channel
        self.scheme = scheme
        self.clientAddress = channel.remoteAddress?.ipAddress
        self.peer = clientAddress.flatMap { IPAddress($0) }
        self.watchdog = watchdog
    }

    /// Whether the caller is one of `proxies` (whose forwarding headers are then kept).
    func isTrustedProxy(_ proxies: [IPNetwork]) -> Bool {
        guard let peer, !proxies.isEmpty else { return false }
        return proxies.contains { $0.contains(peer) }
    }

    /// The verified client certificate's subject (RFC 4514), read from the TLS handler once.
    var certificateSubject: String? {
        if let subject { return subject }
        var found: String?
        if let handler = try? channel.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
            let certificate = handler.peerCertificate,
            let parsed = try? Certificate(derEncoded: certificate.toDERBytes())
        {
            found = parsed.subject.description
        }
        subject = .some(found)
        return found
    }
}
