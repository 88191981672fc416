import Foundation
import NIOHTTP1
import SluiceCore

/// Stages 1 and 2 of the request path (DESIGN "Request path"), synchronous and on plain values:
/// size and target checks, authentication, version and route. Each rejection names the
/// problem the partner gets; the record learns the partner, version and route as they are found.
enum RequestScreening {
    /// Request bodies smaller than this are read and dropped when the gateway answers early;
    /// larger or unbounded ones close the connection (or reset the HTTP/2 stream) instead.
    static let drainableBodyLimit = 64 << 10

    /// - Parameters:
    ///   - keys: The connection's cache of its last API key's partner.
    ///   - certificateSubject: The verified client certificate's subject, looked up only when no
    ///     key was sent and client certificates are enabled.
    static func screen(
        _ head: PartnerRequestHead, _ record: inout RequestRecord, _ snapshot: GatewaySnapshot, scheme: String, keys: KeyCache,
        certificateSubject: () -> String?
    ) -> Screening {
        let limits = snapshot.policy.gateway.limits
        if headerBytes(head) > limits.maxHeaderBytes {
            return .reject(
                Problem(
                    .invalidRequest, detail: "The request line and headers are larger than \(limits.maxHeaderBytes) bytes.", status: 431,
                    title: "Request header fields too large"
                ),
                headers: []
            )
        }
        switch values(of: "host", in: head.headers).count {
        case 0 where head.version == .http1_1:
            return .reject(Problem(.invalidRequest, detail: "An HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)."), headers: [])
        case 0, 1:
            break
        default:
            return .reject(Problem(.invalidRequest, detail: "A request must not have more than one Host header."), headers: [])
        }
        if let problem = PathSafety.check(record.path) {
            return .reject(Problem(.invalidRequest, detail: problem.detail), headers: [])
        }

        guard let partner = authenticate(head, snapshot, scheme: scheme, keys: keys, certificateSubject: certificateSubject) else {
            return .reject(
                Problem(.unauthorized, detail: "Send a valid API key as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'."),
                headers: [("WWW-Authenticate", "Bearer")]
            )
        }
        record.partner = partner.id

        let versionRules: VersionRules
        let routePath: Substring
        switch snapshot.rules.resolveVersion(path: record.path, apiVersionHeader: head.headers.first(name: "api-version"), partner: partner) {
        case .unknown(let name):
            return .reject(Problem(.unknownVersion, detail: "API version '\(name)' does not exist."), headers: [])
        case .forbidden(let rules):
            record.adopt(version: rules)
            return .reject(Problem(.forbiddenVersion, detail: "Your account may not use API version '\(rules.version.name)'."), headers: [])
        case .resolved(let rules, let rest):
            record.adopt(version: rules)
            versionRules = rules
            routePath = rest
        }

        if let rest = taskPath(routePath) {
            record.route = "tasks"
            let action: TaskEndpointRequest.Action
            switch head.method {
            case .GET: action = .status
            case .DELETE: action = .cancel
            default: return .reject(Problem(.methodNotAllowed, detail: "\(head.method.rawValue) is not allowed on a task."), headers: [("Allow", "GET, DELETE")])
            }
            guard let id = TaskID(rest) else {
                return .reject(Problem(.notFound, detail: "There is no task '\(rest.prefix(64))'."), headers: [])
            }
            return .task(TaskEndpointRequest(partner: partner, version: versionRules, action: action, id: id))
        }

        let route: Route
        let parameters: RouteParameters
        switch versionRules.routes.match(method: head.method.rawValue, path: routePath) {
        case .notFound:
            return .reject(Problem(.notFound, detail: "No route for \(routePath) in API version \(versionRules.version.name)."), headers: [])
        case .methodNotAllowed(let allow):
            return .reject(Problem(.methodNotAllowed, detail: "\(head.method.rawValue) is not allowed here."), headers: [("Allow", allow)])
        case .found(let matched, let captured):
            route = matched
            parameters = captured
        }
        record.route = route.id
        let (upstream, canary) = route.upstream(for: partner.id)
        record.upstream = upstream.name
        record.canary = canary

        guard let bodyLength = declaredBodyLength(head) else {
            return .reject(Problem(.invalidRequest, detail: "Content-Length is not valid."), headers: [])
        }
        if case .known(let length) = bodyLength, length > limits.maxRequestBody {
            return .reject(Problem(.payloadTooLarge, detail: "The request body is larger than \(limits.maxRequestBody) bytes."), headers: [])
        }
        // A malformed or missing key is bad input: refused before admission, so it costs nothing.
        var idempotencyKey: String?
        if let mode = route.policy.idempotency {
            switch IdempotencyKey.of(values(of: "idempotency-key", in: head.headers)) {
            case .malformed:
                return .reject(
                    Problem(.invalidIdempotencyKey, detail: "Idempotency-Key must be one value of 1 to 255 printable ASCII characters, bare or quoted."),
                    headers: []
                )
            case .absent where mode == .required:
                return .reject(Problem(.missingIdempotencyKey, detail: "This route needs an Idempotency-Key header."), headers: [])
            case .absent:
                break
            case .present(let key):
                idempotencyKey = key
            }
        }
        let async: AsyncAcceptance? =
            switch route.policy.async {
            case .always: .always
            case .onRequest where prefersRespondAsync(head.headers): .requested
            case .onRequest, .never: nil
            }
        // Admission (rate limits, quotas, concurrency) comes next; then the idempotency claim,
        // then the task or the forwarding.
        let target = route.upstreamPath.render(parameters) + record.query
        return .forward(
            ForwardPlan(
                partner: partner, version: versionRules, route: route, upstream: upstream, canary: canary, target: target, bodyLength: bodyLength, idempotencyKey: idempotencyKey,
                async: async
            )
        )
    }

    /// The id part of `/tasks/ID` (the task endpoints under every version); nil for other paths.
    static func taskPath(_ path: Substring) -> Substring? {
        guard path.hasPrefix("/tasks/") else { return nil }
        return path.dropFirst("/tasks/".count)
    }

    /// Whether `Prefer` holds the `respond-async` preference (RFC 7240; names are case-insensitive).
    static func prefersRespondAsync(_ headers: HTTPHeaders) -> Bool {
        values(of: "prefer", in: headers).contains { value in
            value.split(separator: ",").contains { preference in
                let name = preference.split(separator: ";").first?.split(separator: "=").first ?? ""
                return name.trimmingCharacters(in: .whitespaces).lowercased() == "respond-async"
            }
        }
    }

    /// The partner of the API key, or of the client certificate when no key was sent.
    private static func authenticate(
        _ head: PartnerRequestHead, _ snapshot: GatewaySnapshot, scheme: String, keys: KeyCache, certificateSubject: () -> String?
    ) -> Partner? {
        if let key = Credentials.presented(authorization: head.headers.first(name: "authorization"), apiKey: head.headers.first(name: "x-api-key")) {
            return keys.partner(forKey: key, rules: snapshot.rules)
        }
        guard scheme == "https", snapshot.policy.gateway.tls?.clientCAPath != nil, let subject = certificateSubject() else { return nil }
        return snapshot.rules.partner(forCertificateSubject: subject)
    }

    /// Request target plus header names and values, as the HTTP/1.1 decoder counts them.
    static func headerBytes(_ head: PartnerRequestHead) -> Int {
        var total = head.target.utf8.count
        for (name, value) in head.headers { total += name.utf8.count + value.utf8.count }
        return total
    }

    /// The values of one header field, read in place (`HTTPHeaders`' subscript builds an array,
    /// and this runs for every request).
    static func values(of lowercasedName: StaticString, in headers: HTTPHeaders) -> some Collection<String> {
        headers.lazy.filter { HeaderName.equals($0.name, lowercasedName) }.map(\.value)
    }

    /// Whether a body of this length, unwanted (the gateway answered before reading it), is read to
    /// its end rather than the connection closed: none, or declared and small.
    static func isDrainable(_ length: RequestBodyLength?) -> Bool {
        switch length {
        case .none?: true
        case .known(let bytes)?: bytes <= drainableBodyLimit
        case .unknown?, nil: false
        }
    }

    /// The body's framing; nil when Content-Length is malformed or given twice differently.
    static func declaredBodyLength(_ head: PartnerRequestHead) -> RequestBodyLength? {
        let lengths = values(of: "content-length", in: head.headers)
        if let first = lengths.first {
            guard lengths.allSatisfy({ $0 == first }), let length = Int(first), length >= 0 else { return nil }
            return length == 0 ? RequestBodyLength.none : .known(length)
        }
        if head.headers.contains(name: "transfer-encoding") { return .unknown }
        // An HTTP/1.1 request without either has no body; an HTTP/2 one may send DATA frames.
        guard head.isHTTP2 else { return RequestBodyLength.none }
        switch head.method {
        case .GET, .HEAD, .OPTIONS, .TRACE: return RequestBodyLength.none
        default: return .unknown
        }
    }
}
