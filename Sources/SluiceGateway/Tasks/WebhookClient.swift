import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import SluiceCore

/// Sends one webhook attempt (SPEC §3 Webhooks): resolves the receiver's host, checks the
/// address it is about to dial against `ReceiverAddressRule`, connects to exactly that address
/// (so a name cannot be re-pointed between the check and the connect), POSTs the signed event
/// on a fresh connection and reports the answer's status. Redirects are not followed.
///
/// Not AsyncHTTPClient: it resolves names itself and cannot be told which checked address to
/// dial. Webhooks are not the hot path, so a connection per attempt is fine.
struct WebhookClient: Sendable {
    /// One attempt's request.
    struct Attempt: Sendable {
        var url: URL
        var allowPrivateAddresses: Bool
        /// `webhook-id`, `webhook-timestamp`, `webhook-signature` and the like.
        var headers: [(String, String)]
        var body: Data
        /// For the whole attempt: resolution, connect, TLS, request and the answer's head.
        var timeout: Duration
    }

    /// Turns a host name into the address to dial (blocking: `getaddrinfo`).
    typealias Resolver = @Sendable (_ host: String, _ port: Int) throws -> SocketAddress

    private let group: any EventLoopGroup
    private let tlsContext: NIOSSLContext
    private let resolver: Resolver

    /// The `User-Agent` of every attempt.
    static let userAgent = "Sluice-Webhooks/1"

    init(
        group: any EventLoopGroup, trustRoots: NIOSSLTrustRoots = .default,
        resolver: @escaping Resolver = { try SocketAddress.makeAddressResolvingHost($0, port: $1) }
    ) throws {
        self.group = group
        self.resolver = resolver
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = trustRoots
        configuration.applicationProtocols = ["http/1.1"]
        tlsContext = try NIOSSLContext(configuration: configuration)
    }

    /// Makes the attempt; never throws: every failure is an outcome for the retry schedule.
    func send(_ attempt: Attempt) async -> WebhookDelivery.Outcome {
        guard let components = URLComponents(url: attempt.url, resolvingAgainstBaseURL: false), let scheme = components.scheme,
            scheme == "https" || scheme == "http", var host = components.host, !host.isEmpty
        else { return .refused(reason: "the webhook url is not an http(s) URL") }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let useTLS = scheme == "https"
        let port = components.port ?? (useTLS ? 443 : 80)
        let deadline = NIODeadline.now() + TimeAmount(attempt.timeout)

        let address: SocketAddress
        do {
            address = try await resolve(host: host, port: port, deadline: deadline)
        } catch WebhookAttemptError.timedOut {
            return .failed(reason: "timed out resolving \(host) (webhooks.timeout)", retryAfter: nil)
        } catch {
            return .failed(reason: "could not resolve \(host): \(error)", retryAfter: nil)
        }
        if !attempt.allowPrivateAddresses, let refusal = Self.refusal(of: address) {
            return .refused(reason: "\(host) resolves to \(address.ipAddress ?? "?"), a \(refusal) address; webhooks go to public addresses only")
        }
        let remaining = deadline - .now()
        guard remaining > .zero else { return .failed(reason: "timed out resolving \(host)", retryAfter: nil) }

        let eventLoop = group.next()
        let answer = eventLoop.makePromise(of: HTTPResponseHead.self)
        let tlsContext = tlsContext
        let serverHostname = useTLS && !host.isIPAddress ? host : nil
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: eventLoop)
                .connectTimeout(remaining)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let operations = channel.pipeline.syncOperations
                        if useTLS { try operations.addHandler(NIOSSLClientHandler(context: tlsContext, serverHostname: serverHostname)) }
                        try operations.addHTTPClientHandlers()
                        try operations.addHandler(AnswerHeadHandler(answer: answer))
                    }
                }
                .connect(to: address).get()
        } catch {
            answer.fail(error)
            return .failed(reason: "could not connect to \(host): \(error)", retryAfter: nil)
        }
        do {
            let timer = eventLoop.scheduleTask(deadline: deadline) {
                answer.fail(WebhookAttemptError.timedOut)
                channel.close(promise: nil)
            }
            answer.futureResult.whenComplete { _ in
                timer.cancel()
                channel.close(promise: nil)
            }
            channel.write(HTTPClientRequestPart.head(Self.head(components, host: host, port: port, useTLS: useTLS, attempt)), promise: nil)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: attempt.body))), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            return Self.outcome(try await answer.futureResult.get())
        } catch {
            answer.fail(error)
            return .failed(reason: Self.describe(error, host: host), retryAfter: nil)
        }
    }

    /// The first address the resolver gives (an address literal is its own answer), by
    /// `deadline`: `getaddrinfo` cannot be cancelled, but the attempt stops waiting for it
    /// (the blocked lookup ends on the resolver's own timeouts and its answer is dropped).
    private func resolve(host: String, port: Int, deadline: NIODeadline) async throws -> SocketAddress {
        if host.isIPAddress { return try SocketAddress(ipAddress: host, port: port) }
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: SocketAddress.self)
        let timer = eventLoop.scheduleTask(deadline: deadline) { promise.fail(WebhookAttemptError.timedOut) }
        let resolver = resolver
        NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) { try resolver(host, port) }.whenComplete { result in
            timer.cancel()
            promise.completeWith(result)
        }
        return try await promise.futureResult.get()
    }

    /// Why a webhook may not go to `address`, or nil.
    static func refusal(of address: SocketAddress) -> ReceiverAddressRule.Refusal? {
        guard let text = address.ipAddress, let bytes = ReceiverAddressRule.bytes(of: text) else { return .reserved }
        return ReceiverAddressRule.refusal(address: bytes)
    }

    private static func head(_ components: URLComponents, host: String, port: Int, useTLS: Bool, _ attempt: Attempt) -> HTTPRequestHead {
        let target = (components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath)
            + (components.percentEncodedQuery.map { "?" + $0 } ?? "")
        let defaultPort = useTLS ? 443 : 80
        let hostName = host.contains(":") ? "[\(host)]" : host
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: port == defaultPort ? hostName : "\(hostName):\(port)")
        headers.add(name: "User-Agent", value: userAgent)
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(attempt.body.count))
        headers.add(name: "Connection", value: "close")
        for (name, value) in attempt.headers { headers.add(name: name, value: value) }
        return HTTPRequestHead(version: .http1_1, method: .POST, uri: target, headers: headers)
    }

    /// 2xx delivered, 410 gone, anything else (3xx included) a failure with the receiver's `Retry-After`.
    static func outcome(_ head: HTTPResponseHead) -> WebhookDelivery.Outcome {
        switch head.status.code {
        case 200..<300: return .delivered
        case 410: return .gone
        default:
            let retryAfter = head.headers.first(name: "Retry-After").flatMap { Int64($0.trimmingCharacters(in: .whitespaces)) }
                .flatMap { $0 >= 0 ? Duration.seconds($0) : nil }
            return .failed(reason: "the receiver answered \(head.status.code)", retryAfter: retryAfter)
        }
    }

    private static func describe(_ error: any Error, host: String) -> String {
        switch error {
        case WebhookAttemptError.timedOut: "no answer from \(host) within webhooks.timeout"
        case WebhookAttemptError.closedEarly: "\(host) closed the connection without answering"
        default: "\(host): \(error)"
        }
    }
}

enum WebhookAttemptError: Error {
    case timedOut
    case closedEarly
}

/// Completes the promise with the answer's head; the connection is closed after it.
private final class AnswerHeadHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPClientResponsePart

    private let answer: EventLoopPromise<HTTPResponseHead>

    init(answer: EventLoopPromise<HTTPResponseHead>) {
        self.answer = answer
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // 1xx answers (100 Continue) come before the final one.
        if case .head(let head) = unwrapInboundIn(data), head.status.code >= 200 { answer.succeed(head) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        answer.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        answer.fail(WebhookAttemptError.closedEarly)
        context.fireChannelInactive()
    }
}
