public import Foundation

/// The JSON documents partners see for a task (SPEC §3): the 202 answer, the status document of
/// `GET /{version}/tasks/{id}`, and webhook events, which carry the status document as `data`.
public enum TaskDocument {
    /// The URL path of a task's status, under the accepting request's version.
    public static func statusPath(_ record: TaskRecord) -> String {
        "/\(record.version)/tasks/\(record.id.text)"
    }

    /// `{"created_at","status":"queued","status_url","task_id"}`: the 202 body.
    public static func accepted(_ record: TaskRecord) -> Data {
        var object = JSONText.Object()
        object.string("created_at", timestamp(record.lifecycle.createdAt))
        object.string("status", record.lifecycle.status.rawValue)
        object.string("status_url", statusPath(record))
        object.string("task_id", record.id.text)
        return Data(object.close().utf8)
    }

    /// The status document: status, times, attempts, the history of transitions and, once the
    /// upstream answered, its result (`body` as JSON when the upstream sent JSON, else `body_base64`).
    public static func status(_ record: TaskRecord) -> Data {
        Data(task(record, view: .partner).utf8)
    }

    /// A webhook event: `{"data":{…status…},"timestamp","type":"task.succeeded|task.failed|task.cancelled"}`.
    public static func event(_ record: TaskRecord, at now: Int64) -> Data {
        var object = JSONText.Object()
        object.raw("data", task(record, view: .partner))
        object.string("timestamp", timestamp(now))
        object.string("type", eventType(record))
        return Data(object.close().utf8)
    }

    /// What ops see of a task (`sluice tasks show`): the status document plus partner, version and route.
    public static func operatorView(_ record: TaskRecord) -> Data {
        Data(task(record, view: .operator).utf8)
    }

    /// `{"tasks":[…]}`: tasks as ops see them, without history and results (`GET /admin/tasks`, `sluice tasks list`).
    public static func list(_ records: [TaskRecord]) -> Data {
        var object = JSONText.Object()
        object.raw("tasks", JSONText.array(records.map { task($0, view: .listed) }))
        return Data(object.close().utf8)
    }

    /// `{"webhooks":[…]}`: the dead-letter queue (`GET /admin/webhooks/dead`, `sluice webhooks dead`).
    public static func deadLetters(_ messages: [WebhookMessage]) -> Data {
        var object = JSONText.Object()
        object.raw(
            "webhooks",
            JSONText.array(
                messages.map { message in
                    var entry = JSONText.Object()
                    entry.number("attempts", message.attempts)
                    entry.string("created_at", timestamp(message.createdAt))
                    entry.raw("dead_at", message.deadAt.map { JSONText.string(timestamp($0)) } ?? "null")
                    entry.raw("last_error", message.lastError.map(JSONText.string) ?? "null")
                    entry.string("partner", message.partner)
                    entry.string("task_id", message.task.text)
                    entry.string("type", message.type)
                    entry.string("webhook_id", message.id)
                    return entry.close()
                })
        )
        return Data(object.close().utf8)
    }

    /// `task.` and the final status.
    public static func eventType(_ record: TaskRecord) -> String {
        "task.\(record.lifecycle.status.rawValue)"
    }

    /// RFC 3339 UTC with milliseconds.
    public static func timestamp(_ milliseconds: Int64) -> String {
        Date(timeIntervalSince1970: Double(milliseconds) / 1_000).formatted(rfc3339)
    }

    private static let rfc3339 = Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt)

    /// Who reads a task document: a partner (the status document), ops (plus partner, route
    /// and version), or ops listing tasks (no history, no result).
    private enum View {
        case partner, `operator`, listed
    }

    /// A task document, written by hand with its members in key order (partners poll it:
    /// `JSONSerialization` over dictionaries took two thirds of a status request's CPU).
    private static func task(_ record: TaskRecord, view: View) -> String {
        let lifecycle = record.lifecycle
        var object = JSONText.Object()
        object.number("attempts", lifecycle.attempts)
        object.string("created_at", timestamp(lifecycle.createdAt))
        object.string("error", ifPresent: record.failure)
        if view != .listed { object.raw("history", JSONText.array(lifecycle.history.map(transition))) }
        if view != .partner { object.string("partner", record.partner) }
        if view != .listed, let result = record.result { object.raw("result", self.result(result)) }
        if view != .partner { object.string("route", record.route) }
        object.string("status", lifecycle.status.rawValue)
        object.string("status_url", statusPath(record))
        object.string("task_id", record.id.text)
        object.string("updated_at", timestamp(lifecycle.updatedAt))
        object.string("upstream", ifPresent: record.upstream)
        if view != .partner { object.string("version", record.version) }
        return object.close()
    }

    private static func transition(_ transition: TaskTransition) -> String {
        var object = JSONText.Object()
        object.string("at", timestamp(transition.at))
        object.string("instance", transition.instance)
        object.string("note", ifPresent: transition.note)
        object.string("request_id", transition.requestID)
        object.string("status", transition.status.rawValue)
        object.number("version", transition.version)
        return object.close()
    }

    /// `{"body" or "body_base64","headers":{name: values joined},"status"}`: a JSON body is
    /// embedded as JSON, anything else as base64.
    private static func result(_ result: TaskResult) -> String {
        var headers: [String: String] = [:]
        for header in result.headers {
            let name = header.name.lowercased()
            headers[name] = headers[name].map { "\($0), \(header.value)" } ?? header.value
        }
        let isJSON = headers["content-type"].map { type in
            let media = type.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
            return media == "application/json" || media.hasSuffix("+json")
        } ?? false
        var object = JSONText.Object()
        if isJSON, let body = embeddableJSON(result.body) {
            object.raw("body", body)
        } else {
            object.raw("body_base64", "\"" + result.body.base64EncodedString() + "\"")
        }
        var headerObject = "{"
        for (index, name) in headers.keys.sorted().enumerated() {
            if index > 0 { headerObject.append(",") }
            headerObject.append(JSONText.string(name))
            headerObject.append(":")
            headerObject.append(JSONText.string(headers[name]!))
        }
        object.raw("headers", headerObject + "}")
        object.number("status", result.status)
        return object.close()
    }

    /// The body as JSON text to embed: as the upstream wrote it when it is UTF-8 JSON without a
    /// byte-order mark (its numbers and key order untouched), re-written when it is JSON in
    /// another encoding; nil when it is not JSON.
    private static func embeddableJSON(_ body: Data) -> String? {
        guard let parsed = try? JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed]) else { return nil }
        if !body.starts(with: [0xEF, 0xBB, 0xBF]), let text = String(validating: body, as: UTF8.self) { return text }
        return (try? JSONSerialization.data(withJSONObject: parsed, options: [.sortedKeys, .withoutEscapingSlashes, .fragmentsAllowed]))
            .map { String(decoding: $0, as: UTF8.self) }
    }
}

/// A webhook event on its way to a partner: the signed body stays the same across attempts
/// (only the timestamp and signature change), its id is stable (`webhook-id`).
public struct WebhookMessage: Sendable, Equatable, StoredAsJSON {
    /// `msg_` and the task id's random part: one event per task, so the id is stable.
    public var id: String
    public var task: TaskID
    public var partner: String
    public var type: String
    public var payload: Data
    /// Attempts made so far and the last failure (for the retry schedule and the dead letters).
    public var attempts: Int
    public var lastError: String?
    public var createdAt: Int64
    /// When it went to the dead-letter queue.
    public var deadAt: Int64?
    /// The accepting request's `traceparent`.
    public var traceparent: String?

    /// The event announcing that `record` finished (or was cancelled), made at `now`.
    public init(finished record: TaskRecord, at now: Int64) {
        id = "msg_" + record.id.text.dropFirst(4)
        task = record.id
        partner = record.partner
        type = TaskDocument.eventType(record)
        payload = TaskDocument.event(record, at: now)
        attempts = 0
        createdAt = now
        traceparent = record.traceparent
    }
}
