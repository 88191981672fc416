import NIOCore
import NIOHTTP1
import SluiceCore

/// Stage 6, the response: the headers of an answer, from the upstream or from the gateway.
enum ResponseShaping {
    /// The upstream's headers without hop-by-hop ones, plus the request's own (request id,
    /// version and limit headers), and `Date` when the upstream sent none (RFC 9110 §6.6.1).
    static func forwarded(_ upstream: HTTPHeaders, _ record: RequestRecord, date: String) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.reserveCapacity(upstream.count + RequestRecord.responseHeaderCount + 1)
        let connection = upstream["connection"]
        let nominated = connection.isEmpty ? [] : HeaderRewriter.connectionNominated(values: connection)
        var hasDate = false
        for (name, value) in upstream where HeaderRewriter.keepsResponseHeader(name, nominated: nominated) {
            if !hasDate, name.utf8.count == 4, name.lowercased() == "date" { hasDate = true }
            headers.add(name: name, value: value)
        }
        if !hasDate { headers.add(name: "Date", value: date) }
        record.addResponseHeaders(to: &headers)
        return headers
    }

    /// A problem document's head (with `extra` headers) and body.
    static func problem(
        _ problem: Problem, _ record: RequestRecord, extra: [(String, String)], date: String, allocator: ByteBufferAllocator
    ) -> (HTTPHeaders, ByteBuffer) {
        let body = allocator.buffer(string: problem.json(instance: String(record.path), requestID: record.requestID))
        var headers = HTTPHeaders()
        headers.reserveCapacity(RequestRecord.responseHeaderCount + extra.count + 5)
        record.addResponseHeaders(to: &headers)
        for (name, value) in extra { headers.add(name: name, value: value) }
        headers.add(name: "Content-Type", value: Problem.contentType)
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "Date", value: date)
        return (headers, body)
    }

    /// A JSON document's head from the gateway itself (a task's 202, status or cancel).
    static func document(bodyBytes: Int, extra: [(String, String)], _ record: RequestRecord, date: String) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.reserveCapacity(RequestRecord.responseHeaderCount + extra.count + 4)
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(bodyBytes))
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "Date", value: date)
        for (name, value) in extra { headers.add(name: name, value: value) }
        record.addResponseHeaders(to: &headers)
        return headers
    }

    /// The problem (and extra headers) for a failed upstream call.
    static func problem(for failure: UpstreamFailure) -> (Problem, [(String, String)]) {
        switch failure {
        case .unavailable(let retryAfter):
            (
                Problem(.upstreamUnavailable, detail: "The upstream service is unavailable or at capacity; retry in \(retryAfter) s."),
                [("Retry-After", String(retryAfter))]
            )
        case .timeout:
            (Problem(.upstreamTimeout, detail: "The upstream service did not answer in time."), [])
        case .unreachable:
            (Problem(.badGateway, detail: "The upstream service could not be reached or closed the connection."), [])
        }
    }

    /// The 429 problem for a refusal, with `violated-policies` (`Retry-After` is set by `RequestRecord.adopt`).
    static func problem(refusedFor reason: AdmissionVerdict, _ admission: Admission) -> Problem {
        let wait = admission.decision.map(RateLimitHeaders.retryAfter) ?? 1
        let (type, detail): (ProblemType, String) =
            switch reason {
            case .rateLimited: (.rateLimited, "The request rate is over your plan's limit; retry in \(wait) s.")
            case .quotaExceeded: (.quotaExceeded, "Your plan's quota for this period is used up; it resets in \(wait) s.")
            case .concurrencyLimited, .admitted: (.concurrencyLimited, "Too many of your requests are in progress at once.")
            }
        return Problem(type, detail: detail, extensions: [("violated-policies", .array([.string(reason.rawValue)]))])
    }
}

extension ResponseShaping {
    /// A recorded response replayed: its status, headers and body, with this request's own
    /// headers and `Idempotent-Replayed: true`.
    static func replay(_ record: IdempotencyRecord, _ request: RequestRecord, date: String) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.reserveCapacity(record.headers.count + RequestRecord.responseHeaderCount + 3)
        for header in record.headers { headers.add(name: header.name, value: header.value) }
        headers.add(name: "Content-Length", value: String(record.body.count))
        headers.add(name: "Date", value: date)
        request.addResponseHeaders(to: &headers)
        headers.add(name: "Idempotent-Replayed", value: "true")
        return headers
    }

    /// A cached answer's headers: the stored upstream headers (with the origin's `Date`), its
    /// `Content-Length`, `Age` and `Cache-Status`, and the request's own. A 304 keeps only the
    /// headers RFC 9110 §15.4.5 lists, and has no body.
    static func cached(_ answer: PartnerRequestStateMachine.CachedAnswer, _ request: RequestRecord, date: String) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.reserveCapacity(answer.response.headers.count + RequestRecord.responseHeaderCount + 4)
        var hasDate = false
        for header in answer.response.headers {
            let name = header.name.lowercased()
            if name == "content-length" || name == "age" || (answer.notModified && !notModifiedHeaders.contains(name)) { continue }
            if name == "date" { hasDate = true }
            headers.add(name: header.name, value: header.value)
        }
        if !hasDate { headers.add(name: "Date", value: date) }
        if !answer.notModified { headers.add(name: "Content-Length", value: String(answer.response.body.count)) }
        headers.add(name: "Age", value: String(answer.age))
        headers.add(name: "Cache-Status", value: answer.cacheStatus)
        request.addResponseHeaders(to: &headers)
        return headers
    }

    /// What a 304 carries of the stored answer (RFC 9110 §15.4.5).
    private static let notModifiedHeaders: Set<String> = ["cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified"]

    /// The answer to a retry whose original response body was too large to keep.
    static func notReplayable(_ record: IdempotencyRecord) -> (Problem, [(String, String)]) {
        let problem = Problem(
            .idempotentResponseNotReplayable,
            detail: "The request with this key already completed with status \(record.status), but its response body was larger "
                + "than \(IdempotencyRecord.maxBody) bytes and is not kept for replay. Use a new key to send the request again.",
            extensions: [("original-status", .int(record.status))]
        )
        let location = record.headers.first { $0.name.lowercased() == "location" }.map { [("Location", $0.value)] } ?? []
        return (problem, location)
    }
}
