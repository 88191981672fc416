public import Foundation

/// The JSON documents partners see for a task (SPEC §3): the 202 answer, the status document of
/// `GET /{version}/tasks/{id}`, and webhook events, which carry the status document as `data`.
public enum TaskDocument {
    /// The URL path of a task's status, under the accepting request's version.
    public static func statusPath(_ record: TaskRecord) -> String {
        "/\(record.version)/tasks/\(record.id.text)"
    }

    /// `{"created_at","status":"queued","status_url","task_id"}`: the 202 body, written by hand
    /// (`JSONSerialization` over a dictionary took a fifth of an accept's CPU).
    public static func accepted(_ record: TaskRecord) -> Data {
        var out = "{"
        JSONText.appendMember("created_at", timestamp(record.lifecycle.createdAt), to: &out)
        out.append(",")
        JSONText.appendMember("status", record.lifecycle.status.rawValue, to: &out)
        out.append(",")
        JSONText.appendMember("status_url", statusPath(record), to: &out)
        out.append(",")
        JSONText.appendMember("task_id", record.id.text, to: &out)
        out.append("}")
        return Data(out.utf8)
    }

    /// The status document: status, times, attempts, the history of transitions and, once the
    /// upstream answered, its result (`body` as JSON when the upstream sent JSON, else `body_base64`).
    public static func status(_ record: TaskRecord) -> Data {
        json(statusObject(record))
    }

    /// A webhook event: `{"type":"task.succeeded|task.failed|task.cancelled","timestamp","data":{…status…}}`.
    public static func event(_ record: TaskRecord, at now: Int64) -> Data {
        json(["type": eventType(record), "timestamp": timestamp(now), "data": statusObject(record)])
    }

    /// What ops see of a task (`sluice tasks show`): the status document plus partner, version and route.
    public static func operatorView(_ record: TaskRecord) -> Data {
        json(operatorObject(record))
    }

    /// `{"tasks":[…]}`: tasks as ops see them, without results (`GET /admin/tasks`, `sluice tasks list`).
    public static func list(_ records: [TaskRecord]) -> Data {
        json(["tasks": records.map { record -> [String: Any] in
            var object = operatorObject(record)
            object["history"] = nil
            object["result"] = nil
            return object
        }])
    }

    /// `{"webhooks":[…]}`: the dead-letter queue (`GET /admin/webhooks/dead`, `sluice webhooks dead`).
    public static func deadLetters(_ messages: [WebhookMessage]) -> Data {
        json(["webhooks": messages.map { message -> [String: Any] in
            [
                "webhook_id": message.id, "task_id": message.task.text, "partner": message.partner, "type": message.type,
                "attempts": message.attempts, "last_error": message.lastError ?? NSNull(), "created_at": timestamp(message.createdAt),
                "dead_at": message.deadAt.map(timestamp) ?? NSNull(),
            ]
        }])
    }

    private static func operatorObject(_ record: TaskRecord) -> [String: Any] {
        var object = statusObject(record)
        object["partner"] = record.partner
        object["version"] = record.version
        object["route"] = record.route
        return object
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

    private static func statusObject(_ record: TaskRecord) -> [String: Any] {
        let lifecycle = record.lifecycle
        var object: [String: Any] = [
            "task_id": record.id.text, "status": lifecycle.status.rawValue, "status_url": statusPath(record),
            "created_at": timestamp(lifecycle.createdAt), "updated_at": timestamp(lifecycle.updatedAt), "attempts": lifecycle.attempts,
            "history": lifecycle.history.map { transition -> [String: Any] in
                var entry: [String: Any] = [
                    "version": transition.version, "status": transition.status.rawValue, "at": timestamp(transition.at),
                    "instance": transition.instance, "request_id": transition.requestID,
                ]
                if let note = transition.note { entry["note"] = note }
                return entry
            },
        ]
        if let upstream = record.upstream { object["upstream"] = upstream }
        if let result = record.result { object["result"] = resultObject(result) }
        if let failure = record.failure { object["error"] = failure }
        return object
    }

    private static func resultObject(_ result: TaskResult) -> [String: Any] {
        var headers: [String: String] = [:]
        for header in result.headers {
            let name = header.name.lowercased()
            headers[name] = headers[name].map { "\($0), \(header.value)" } ?? header.value
        }
        var object: [String: Any] = ["status": result.status, "headers": headers]
        let isJSON = headers["content-type"].map { type in
            let media = type.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
            return media == "application/json" || media.hasSuffix("+json")
        } ?? false
        if isJSON, let body = try? JSONSerialization.jsonObject(with: result.body, options: [.fragmentsAllowed]) {
            object["body"] = body
        } else {
            object["body_base64"] = result.body.base64EncodedString()
        }
        return object
    }

    private static func json(_ object: [String: Any]) -> Data {
        (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
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
