import Foundation
import HTTPTypes
import Hummingbird
import SluiceCore

/// The admin listener (SPEC §5): health, readiness, Prometheus metrics and the admin API
/// behind `Authorization: Bearer ADMIN_TOKEN` (SHA-256 compared against gateway.yaml's tokens).
struct AdminAPI {
    let runtime: GatewayRuntime
    /// Reloads the policy folder now (the same as SIGHUP).
    let reload: @Sendable () async -> PolicyReloader.Outcome

    /// Every path the admin listener serves and its methods (`HEAD` is served wherever `GET`
    /// is); any other method on these paths answers 405 with `Allow` (RFC 9110 §15.5.6).
    static let paths: [(path: String, methods: [HTTPRequest.Method])] = [
        ("/healthz", [.get]), ("/readyz", [.get]), ("/metrics", [.get]), ("/openapi.yaml", [.get]), ("/admin/policies", [.get]),
        ("/admin/policies/reload", [.post]), ("/admin/tasks", [.get]), ("/admin/webhooks/dead", [.get]),
        ("/admin/webhooks/dead/:id/redrive", [.post]), ("/admin/usage", [.get]), ("/admin/upstreams", [.get]), ("/admin/cache", [.delete]),
    ]

    /// The router behind a check that answers 405 for a method a served path does not declare
    /// (whatever the method, `QUERY` or `FOO` too).
    func responder() -> some HTTPResponder<BasicRequestContext> {
        MethodCheck(paths: Self.paths, next: router().buildResponder()) { request, allow in
            var response = problemResponse(Problem(.methodNotAllowed, detail: "\(request.method.rawValue) is not allowed here."), request)
            response.headers[.allow] = allow
            return response
        }
    }

    func router() -> Router<BasicRequestContext> {
        let router = Router(options: .autoGenerateHeadEndpoints)
        router.get("/healthz") { _, _ in json(.ok, #"{"status":"ok"}"#) }
        router.get("/readyz") { _, _ in
            if runtime.isDraining { return json(.serviceUnavailable, #"{"status":"draining"}"#) }
            let admission = runtime.snapshots.load().admission
            if await admission.backend.isReachable() { return json(.ok, #"{"status":"ready"}"#) }
            // The store is down: with a fallback this instance still serves, so it stays in the
            // load balancer (all instances would fail alike); with `deny` it cannot serve.
            if admission.mode == .deny { return json(.serviceUnavailable, #"{"status":"store-unavailable"}"#) }
            return json(.ok, #"{"status":"ready","degraded":true}"#)
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: runtime.metrics.render()))
            )
        }
        router.get("/openapi.yaml") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/yaml"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: PackageResources.openapi_yaml))
            )
        }
        router.get("/admin/policies") { request, _ in
            if let denied = authorize(request, needs: .viewer) { return denied }
            return json(.ok, policyStatus())
        }
        router.post("/admin/policies/reload") { request, _ in
            if let denied = authorize(request, needs: .operator) { return denied }
            switch await reload() {
            case .loaded: return json(.ok, policyStatus())
            case .rejected(let errors):
                let problem = Problem(
                    .invalidRequest, detail: "The policy files have problems; the running set stays.", status: 422,
                    title: "Invalid policy files",
                    extensions: [("problems", .array(errors.problems.map { .string($0.description) }))]
                )
                return problemResponse(problem, request)
            }
        }
        router.get("/admin/upstreams") { request, _ in
            if let denied = authorize(request, needs: .viewer) { return denied }
            let upstreams = runtime.snapshots.load().upstreams.sorted { $0.key < $1.key }.map { $0.value.status() }
            return json(.ok, JSONValue.object([("upstreams", .array(upstreams))]).rendered)
        }
        router.get("/admin/tasks") { request, _ in
            if let denied = authorize(request, needs: .viewer) { return denied }
            let query = request.uri.queryParameters
            var status: TaskStatus?
            if let text = query.get("status") {
                guard let parsed = TaskStatus(rawValue: text) else {
                    let statuses = TaskStatus.allCases.map(\.rawValue).joined(separator: ", ")
                    return problemResponse(Problem(.invalidRequest, detail: "status must be one of \(statuses)."), request)
                }
                status = parsed
            }
            return try await answer(request) { operations, partner, limit in
                try await operations.list(status: status, partner: partner, limit: limit)
            }
        }
        router.get("/admin/webhooks/dead") { request, _ in
            if let denied = authorize(request, needs: .viewer) { return denied }
            return try await answer(request) { operations, partner, limit in try await operations.deadWebhooks(partner: partner, limit: limit) }
        }
        router.post("/admin/webhooks/dead/:id/redrive") { request, context in
            if let denied = authorize(request, needs: .operator) { return denied }
            let id = context.parameters.get("id") ?? ""
            do {
                guard try await taskOperations().redrive(id) else {
                    return problemResponse(Problem(.notFound, detail: "No dead webhook message has the id '\(id)'."), request)
                }
            } catch {
                return problemResponse(Self.storeUnavailable(error), request)
            }
            return json(.accepted, JSONValue.object([("webhook_id", .string(id)), ("status", .string("scheduled"))]).rendered)
        }
        router.delete("/admin/cache") { request, _ in
            if let denied = authorize(request, needs: .operator) { return denied }
            let parameters = request.uri.queryParameters
            let (route, partner) = (parameters.get("route"), parameters.get("partner"))
            let snapshot = runtime.snapshots.load()
            do {
                let purged = try await CachePurge(policy: snapshot.policy, store: snapshot.store).purge(route: route, partner: partner)
                runtime.logger.info("cache purged", metadata: ["route": .string(route ?? ""), "partner": .string(partner ?? "*"), "purged": "\(purged)"])
                return json(.ok, JSONValue.object([("route", .string(route ?? "")), ("partner", partner.map { .string($0) } ?? .null), ("purged", .int(purged))]).rendered)
            } catch let refusal as CachePurge.Refusal {
                let problem = switch refusal {
                case .missingRoute: Problem(.invalidRequest, detail: refusal.description + ".")
                default: Problem(.notFound, detail: refusal.description + ".")
                }
                return problemResponse(problem, request)
            } catch {
                return problemResponse(Self.storeUnavailable(error), request)
            }
        }
        router.get("/admin/usage") { request, _ in
            if let denied = authorize(request, needs: .viewer) { return denied }
            let parameters = request.uri.queryParameters
            let query: UsageQuery
            do throws(UsageQueryError) {
                query = try UsageQuery(from: parameters.get("from"), to: parameters.get("to"), partner: parameters.get("partner"))
            } catch {
                return problemResponse(Problem(.invalidRequest, detail: error.description + "."), request)
            }
            let snapshot = runtime.snapshots.load()
            let reports = UsageReports(store: snapshot.store, partners: Set(snapshot.policy.partners.map(\.id)))
            do {
                return json(.ok, try await reports.report(query).json())
            } catch let error as UsageQueryError {
                return problemResponse(Problem(.notFound, detail: error.description + "."), request)
            } catch {
                return problemResponse(Self.storeUnavailable(error), request)
            }
        }
        return router
    }

    private func taskOperations() -> TaskOperations {
        let snapshot = runtime.snapshots.load()
        return TaskOperations(store: snapshot.tasks.store, retention: snapshot.policy.gateway.tasks.retention)
    }

    /// A listing: checks `partner` and `limit` (1–1000, default 100), then answers the JSON `list` makes.
    private func answer(
        _ request: Request, _ list: (TaskOperations, _ partner: String?, _ limit: Int) async throws -> Data
    ) async throws -> Response {
        let query = request.uri.queryParameters
        let partner = query.get("partner")
        let limit = Int(query.get("limit") ?? "100")
        if let problem = TaskOperations.listingProblem(partner: partner, limit: limit) {
            return problemResponse(Problem(.invalidRequest, detail: problem + "."), request)
        }
        do {
            return json(.ok, ByteBuffer(bytes: try await list(taskOperations(), partner, limit!)))
        } catch {
            return problemResponse(Self.storeUnavailable(error), request)
        }
    }

    private static func storeUnavailable(_ error: any Error) -> Problem {
        Problem(.upstreamUnavailable, detail: "The store did not answer: \(error)", title: "Store unavailable")
    }

    /// nil when the bearer token's role is at least `needs`; else the 401 or 403 answer.
    private func authorize(_ request: Request, needs role: GatewayPolicy.AdminRole) -> Response? {
        let tokens = runtime.snapshots.load().policy.gateway.adminTokens
        guard let presented = Credentials.presented(authorization: request.headers[.authorization], apiKey: request.headers[.xAPIKey]) else {
            return problemResponse(Problem(.unauthorized, detail: "Send an admin token as 'Authorization: Bearer TOKEN'."), request)
        }
        let digest = SHA256Digest.of(presented)
        var granted: GatewayPolicy.AdminRole?
        for token in tokens where token.sha256.constantTimeEquals(digest) { granted = token.role }
        guard let granted else {
            return problemResponse(Problem(.unauthorized, detail: "The admin token is not valid."), request)
        }
        guard granted >= role else {
            return problemResponse(Problem(.forbidden, detail: "This needs the \(role.rawValue) role; the token has \(granted.rawValue)."), request)
        }
        return nil
    }

    private func policyStatus() -> String {
        let snapshot = runtime.snapshots.load()
        let status = runtime.policyStatus.withLock { $0 }
        let policy = snapshot.policy
        var members: [(String, JSONValue)] = [
            ("version", .string(policy.versionHash)),
            ("loaded_at", .string(snapshot.rules.loadedAt.formatted(.iso8601))),
            ("partners", .int(policy.partners.count)),
            ("routes", .int(policy.routes.routes.count)),
            ("upstreams", .array(policy.upstreams.keys.sorted().map { .string($0) })),
            ("versions", .array(policy.routes.versions.map { .string($0.name) })),
            ("store", storeStatus(snapshot.admission.backend, settings: policy.gateway.store)),
        ]
        if let error = status.lastError {
            members.append(("last_error", .object([("at", .string(status.lastErrorAt?.formatted(.iso8601) ?? "")), ("problems", .array(error.map { .string($0) }))])))
        } else {
            members.append(("last_error", .null))
        }
        return JSONValue.object(members).rendered
    }

    /// The store in use: its kind, durability, and for Redis the primary the gateway talks to
    /// and its last change (a Sentinel failover).
    private func storeStatus(_ backend: StoreBackend, settings: GatewayPolicy.Store) -> JSONValue {
        guard let primary = backend.primary else {
            return .object([("kind", .string("embedded")), ("durability", .string(settings.durability.rawValue))])
        }
        if let cluster = primary.cluster {
            let (map, changed) = cluster.current
            return .object([
                ("kind", .string("cluster")), ("durability", .string(settings.durability.rawValue)),
                ("slots_covered", .int(map?.coveredSlots ?? 0)), ("primaries", .int(map?.primaries.count ?? 0)),
                ("replicas", .int(map?.replicas ?? 0)),
                ("nodes", .array((map?.primaries ?? []).map { .string($0.description) })),
                ("map_changed_at", changed.map { .string($0.formatted(.iso8601)) } ?? .null),
            ])
        }
        let (endpoint, change) = primary.current
        let lastChange: JSONValue = change.map { change in
            .object([
                ("reason", .string(change.reason.rawValue)), ("old", change.old.map { .string($0.description) } ?? .null),
                ("new", .string(change.new.description)), ("at", .string(change.at.formatted(.iso8601))),
            ])
        } ?? .null
        return .object([
            ("kind", .string(primary.isSentinel ? "sentinel" : "redis")), ("durability", .string(settings.durability.rawValue)),
            ("primary", endpoint.map { .string($0.description) } ?? .null), ("last_change", lastChange),
        ])
    }

    /// A problem document; its `request_id` is also in `X-Request-Id`, as on the partner listener.
    private func problemResponse(_ problem: Problem, _ request: Request) -> Response {
        let requestID = runtime.identifiers.requestID()
        var headers: HTTPFields = [.contentType: Problem.contentType, .cacheControl: "no-store", .xRequestID: requestID]
        if problem.status == 401 { headers[.wwwAuthenticate] = "Bearer" }
        return Response(
            status: .init(code: problem.status),
            headers: headers,
            body: ResponseBody(byteBuffer: ByteBuffer(string: problem.json(instance: request.uri.path, requestID: requestID)))
        )
    }
}

/// Answers a request for a known path with a method it does not serve (`refuse`, given the
/// `Allow` value); everything else goes to `next`.
private struct MethodCheck<Next: HTTPResponder<BasicRequestContext>>: HTTPResponder {
    /// Per path (segments, `:name` matching any one segment): the `Allow` value and its methods.
    private let table: [(segments: [Substring], allowed: Set<HTTPRequest.Method>, allow: String)]
    let next: Next
    let refuse: @Sendable (Request, String) -> Response

    init(paths: [(path: String, methods: [HTTPRequest.Method])], next: Next, refuse: @escaping @Sendable (Request, String) -> Response) {
        table = paths.map { path, methods in
            let allowed = methods.contains(.get) ? methods + [.head] : methods
            return (path.split(separator: "/"), Set(allowed), allowed.map(\.rawValue).joined(separator: ", "))
        }
        self.next = next
        self.refuse = refuse
    }

    func respond(to request: Request, context: BasicRequestContext) async throws -> Response {
        let segments = request.uri.path.split(separator: "/")
        let known = table.first { entry in
            entry.segments.count == segments.count && zip(entry.segments, segments).allSatisfy { $0.hasPrefix(":") || $0 == $1 }
        }
        if let known, !known.allowed.contains(request.method) { return refuse(request, known.allow) }
        return try await next.respond(to: request, context: context)
    }
}

private func json(_ status: HTTPResponse.Status, _ body: String) -> Response {
    json(status, ByteBuffer(string: body))
}

private func json(_ status: HTTPResponse.Status, _ body: ByteBuffer) -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: body))
}

extension HTTPField.Name {
    fileprivate static let xAPIKey = Self("X-API-Key")!
    fileprivate static let xRequestID = Self("X-Request-Id")!
}
