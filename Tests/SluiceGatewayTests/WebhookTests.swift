import Foundation
import NIOCore
import SluiceCore
import TestSupport
import Testing
@testable import SluiceGateway

/// Webhook delivery (SPEC §3 Webhooks, issue 12) to a real receiver on loopback that checks
/// every signature: retries with a stable id, the dead-letter queue and its redrive (admin API
/// and CLI), 410, and the SSRF guard.
@Suite(.serialized)
struct WebhookTests {
    private static func addRoute(_ policies: inout TestPolicies) {
        policies.addRoutes(
            "{ id: price, versions: [v2], method: POST, path: /price-calculations, upstream: main, upstream_path: /price, async: always }"
        )
    }

    /// Accepts a short task and returns its id.
    private func acceptTask(_ gateway: GatewayHarness) async throws -> String {
        let accepted = try await gateway.partner(.POST, "/v2/price-calculations?ms=1", body: .bytes(ByteBuffer(string: #"{"part":"A-1"}"#)))
        #expect(accepted.status == 202)
        return try #require(try accepted.json()["task_id"] as? String)
    }

    private static func messageID(of task: String) -> String { "msg_" + task.dropFirst(4) }

    private func deliveries(_ gateway: GatewayHarness, _ result: String) async throws -> Double {
        try await gateway.metric(#"sluice_webhook_deliveries_total{result="\#(result)"}"#) ?? 0
    }

    /// A receiver that fails twice and then accepts gets three attempts of one event: the same
    /// `webhook-id`, each freshly signed with the partner's secret; the body is the task event —
    /// on the embedded store and on Redis.
    @Test(arguments: [false, true])
    func failedAttemptsAreRetriedWithTheSameID(onRedis: Bool) async throws {
        let url = onRedis ? try await TaskDatabase.url() : nil
        try await withWebhookReceiver { receiver, port in
            receiver.answer([500, 503])
            try await GatewayHarness.with({ policies in
                Self.addRoute(&policies)
                policies.addWebhook(url: "http://127.0.0.1:\(port)/hooks/sluice")
                if let url { policies.useRedis(url, timeout: "2s") }
            }) { gateway in
                let task = try await acceptTask(gateway)
                // Alone this takes 0.2 s; amid the whole suite on the shared test Redis the first
                // attempt was seen 4 s after the accept and the three took up to 10 s.
                try await eventually(timeout: .seconds(30), "three attempts reach the receiver") { receiver.deliveries.count >= 3 }
                try await eventually("the delivery is counted") { try await deliveries(gateway, "delivered") == 1 }
                let attempts = receiver.deliveries
                #expect(attempts.count == 3)
                #expect(attempts.allSatisfy { $0.id == Self.messageID(of: task) })
                #expect(attempts.allSatisfy { $0.verified })
                #expect(attempts.allSatisfy { $0.userAgent == "Sluice-Webhooks/1" })
                #expect(Set(attempts.map(\.body)).count == 1)
                let event = try attempts[2].json()
                #expect(event["type"] as? String == "task.succeeded")
                #expect(event["timestamp"] is String)
                let data = try #require(event["data"] as? [String: Any])
                #expect(data["task_id"] as? String == task)
                #expect(data["status"] as? String == "succeeded")
                #expect(try await deliveries(gateway, "failed") == 2)
            }
        }
    }

    /// A receiver that always fails: after the schedule the message is dead with its last error
    /// (admin API and `sluice webhooks dead`); a viewer may not redrive (403), an unknown id is
    /// 404, `sluice webhooks redrive ID` sends it again and it is delivered. `sluice tasks show`
    /// and `list` read the same store.
    @Test func deadLetterIsListedAndRedriven() async throws {
        let url = try await TaskDatabase.url()
        try await withWebhookReceiver { receiver, port in
            receiver.answer([], then: 500)
            try await GatewayHarness.with({ policies in
                Self.addRoute(&policies)
                policies.addWebhook(url: "http://127.0.0.1:\(port)/hook", schedule: "[50ms]")
                policies.useRedis(url, timeout: "2s")
            }) { gateway in
                let task = try await acceptTask(gateway)
                let id = Self.messageID(of: task)
                var dead: [String: Any] = [:]
                try await eventually("the message is dead") {
                    let listing = try await gateway.send(.GET, gateway.admin + "/admin/webhooks/dead?partner=acme", key: TestKeys.viewerToken)
                    let entries = try listing.json()["webhooks"] as? [[String: Any]] ?? []
                    dead = entries.first { $0["webhook_id"] as? String == id } ?? [:]
                    return !dead.isEmpty
                }
                #expect(receiver.deliveries.count == 2)
                #expect(dead["task_id"] as? String == task)
                #expect(dead["attempts"] as? Int == 2)
                #expect(dead["last_error"] as? String == "the receiver answered 500")
                #expect(dead["type"] as? String == "task.succeeded")
                try await eventually("the dead gauge counts it") { (try await gateway.metric("sluice_webhooks_dead") ?? 0) >= 1 }

                let policies = ["--policies", gateway.policies.directory.path]
                let listed = try await SluiceProcess.run(["webhooks", "dead", "--partner", "acme"] + policies)
                #expect(listed.code == 0, "\(listed.stderr)")
                #expect(listed.stdout.split(separator: "\n").first == "webhook_id\ttask_id\tpartner\ttype\tattempts\tdead_at\tlast_error")
                #expect(listed.stdout.contains("\(id)\t\(task)\tacme\ttask.succeeded\t2\t"))
                let shown = try await SluiceProcess.run(["tasks", "show", task] + policies)
                #expect(shown.code == 0, "\(shown.stderr)")
                let document = try JSONSerialization.jsonObject(with: Data(shown.stdout.utf8)) as? [String: Any]
                #expect(document?["partner"] as? String == "acme")
                #expect(document?["route"] as? String == "price")
                #expect(document?["status"] as? String == "succeeded")
                let tasks = try await SluiceProcess.run(["tasks", "list", "--status", "succeeded", "--partner", "acme"] + policies)
                #expect(tasks.stdout.contains("\(task)\tacme\tprice\tsucceeded\t1\t"))
                #expect(try await SluiceProcess.run(["tasks", "show", "tsk_000000000000000000000000"] + policies).code == 1)

                let viewer = try await gateway.send(.POST, gateway.admin + "/admin/webhooks/dead/\(id)/redrive", key: TestKeys.viewerToken)
                #expect(viewer.status == 403)
                let unknown = try await gateway.send(.POST, gateway.admin + "/admin/webhooks/dead/msg_nosuchmessage/redrive", key: TestKeys.operatorToken)
                #expect(unknown.status == 404)
                receiver.answer([], then: 204)
                let redriven = try await SluiceProcess.run(["webhooks", "redrive", id] + policies)
                #expect(redriven.code == 0, "\(redriven.stderr)")
                try await eventually("the redriven message is delivered") { try await deliveries(gateway, "delivered") == 1 }
                #expect(receiver.deliveries.count == 3)
                #expect(receiver.deliveries.allSatisfy { $0.id == id && $0.verified })
                let after = try await gateway.send(.GET, gateway.admin + "/admin/webhooks/dead?partner=acme", key: TestKeys.viewerToken)
                #expect(!after.text.contains(id))
                #expect(try await SluiceProcess.run(["webhooks", "redrive", id] + policies).code == 1)
            }
        }
    }

    /// Admin listings check their parameters; the CLI refuses the embedded store and bad flags.
    @Test func listingsRefuseBadInput() async throws {
        try await GatewayHarness.with(Self.addRoute) { gateway in
            for query in ["status=done", "limit=0", "limit=1001", "limit=ten", "partner=a%20b"] {
                let answer = try await gateway.send(.GET, gateway.admin + "/admin/tasks?\(query)", key: TestKeys.viewerToken)
                #expect(answer.status == 400, "\(query)")
                #expect(try answer.json()["type"] as? String == "urn:sluice:problem:invalid-request")
            }
            let task = try await acceptTask(gateway)
            let listing = try await gateway.send(.GET, gateway.admin + "/admin/tasks?partner=acme&limit=5", key: TestKeys.viewerToken)
            let tasks = try listing.json()["tasks"] as? [[String: Any]] ?? []
            #expect(tasks.map { $0["task_id"] as? String } == [task])
            #expect(tasks.first?["history"] == nil)

            let policies = ["--policies", gateway.policies.directory.path]
            let embedded = try await SluiceProcess.run(["tasks", "list"] + policies)
            #expect(embedded.code == 1)
            #expect(embedded.stderr.contains("embedded store"))
            #expect(try await SluiceProcess.run(["tasks", "list", "--status", "done"] + policies).code == 1)
            #expect(try await SluiceProcess.run(["webhooks", "redrive", "--all", "msg_x"] + policies).code == 1)
            #expect(try await SluiceProcess.run(["webhooks", "dead", "--limit", "0"] + policies).code == 1)
        }
    }

    /// A 410 disables the partner's endpoint: later messages are held, not sent and not lost;
    /// when the policies change, the held messages are delivered.
    @Test func goneDisablesTheEndpointUntilThePoliciesChange() async throws {
        try await withWebhookReceiver { receiver, port in
            receiver.answer([410])
            try await GatewayHarness.with({ policies in
                Self.addRoute(&policies)
                policies.addWebhook(url: "http://127.0.0.1:\(port)/hook")
            }) { gateway in
                let first = try await acceptTask(gateway)
                try await eventually("the receiver answers 410") { try await deliveries(gateway, "gone") == 1 }
                let second = try await acceptTask(gateway)
                try await eventually("both messages are held") { try await deliveries(gateway, "held") >= 4 }
                #expect(receiver.deliveries.count == 1)

                let partner = gateway.policies.files["partners/acme.yaml"]!
                try gateway.policies.rewrite("partners/acme.yaml", partner.replacingOccurrences(of: "name: ACME Manufacturing", with: "name: ACME GmbH"))
                try await eventually("the held messages are delivered") { try await deliveries(gateway, "delivered") == 2 }
                #expect(Set(receiver.deliveries.map(\.id)) == [Self.messageID(of: first), Self.messageID(of: second)])
                #expect(receiver.deliveries.allSatisfy { $0.verified })
            }
        }
    }

    /// Without `allow_private_addresses`, a name that resolves to a loopback address is refused
    /// before anything is sent; the message is dead at once with the reason.
    @Test func privateReceiversAreRefused() async throws {
        try await withWebhookReceiver { receiver, port in
            try await GatewayHarness.with({ policies in
                Self.addRoute(&policies)
                policies.addWebhook(url: "https://localhost:\(port)/hook", allowPrivateAddresses: false)
            }) { gateway in
                let task = try await acceptTask(gateway)
                var dead: [String: Any] = [:]
                try await eventually("the message is dead") {
                    let listing = try await gateway.send(.GET, gateway.admin + "/admin/webhooks/dead", key: TestKeys.viewerToken)
                    dead = (try listing.json()["webhooks"] as? [[String: Any]])?.first ?? [:]
                    return !dead.isEmpty
                }
                #expect(dead["task_id"] as? String == task)
                #expect(dead["attempts"] as? Int == 1)
                let reason = try #require(dead["last_error"] as? String)
                #expect(reason.contains("localhost resolves to") && reason.contains("loopback"), "\(reason)")
                #expect(try await deliveries(gateway, "refused") == 1)
                #expect(receiver.deliveries.isEmpty)
            }
        }
    }

    /// The client checks the address it dials: metadata, private, CGNAT, and IPv4 carried in
    /// IPv6 forms are refused without a connection; with private addresses allowed, a closed
    /// port is an ordinary failure (retried).
    @Test func clientRefusesPrivateAddressLiterals() async throws {
        let client = try WebhookClient(group: .singletonMultiThreadedEventLoopGroup)
        func send(_ url: String, allowPrivate: Bool = false, timeout: Duration = .seconds(2)) async -> WebhookDelivery.Outcome {
            await client.send(.init(url: URL(string: url)!, allowPrivateAddresses: allowPrivate, headers: [], body: Data("{}".utf8), timeout: timeout))
        }
        for url in [
            "https://169.254.169.254/latest/meta-data", "https://10.1.2.3/hook", "https://100.64.0.1/hook", "https://[::ffff:10.0.0.1]/hook",
            "https://[64:ff9b::7f00:1]/hook", "https://[2002:c0a8:0101::1]/hook", "https://[fd00::1]/hook", "https://0.0.0.0/hook",
            "https://[::1]:8443/hook",
        ] {
            guard case .refused(let reason) = await send(url) else {
                Issue.record("\(url) was not refused")
                continue
            }
            #expect(reason.contains("webhooks go to public addresses only"), "\(reason)")
        }
        guard case .failed(let reason, nil) = await send("http://127.0.0.1:1/hook", allowPrivate: true) else {
            Issue.record("a closed port should be a failure")
            return
        }
        #expect(reason.contains("could not connect to 127.0.0.1"), "\(reason)")
        let blackhole = try BlackholePort()
        let timedOut = await send("http://127.0.0.1:\(blackhole.port)/hook", allowPrivate: true, timeout: .milliseconds(200))
        guard case .failed = timedOut else {
            Issue.record("an attempt past webhooks.timeout should be a failure, got \(timedOut)")
            return
        }
    }

    /// A name lookup that hangs ends the attempt at `webhooks.timeout`: the sender does not wait
    /// for `getaddrinfo` (the stand-in resolver here blocks for 10 s).
    @Test func hangingNameLookupEndsTheAttempt() async throws {
        let client = try WebhookClient(group: .singletonMultiThreadedEventLoopGroup) { host, port in
            Thread.sleep(forTimeInterval: 10)
            return try SocketAddress(ipAddress: "127.0.0.1", port: port)
        }
        let started = ContinuousClock.now
        let outcome = await client.send(
            .init(url: URL(string: "https://hooks.partner.example/sluice")!, allowPrivateAddresses: false, headers: [], body: Data("{}".utf8), timeout: .milliseconds(300))
        )
        guard case .failed(let reason, nil) = outcome else {
            Issue.record("a lookup past webhooks.timeout should be a failure, got \(outcome)")
            return
        }
        #expect(reason.contains("timed out resolving hooks.partner.example"), "\(reason)")
        #expect(ContinuousClock.now - started < .seconds(8), "the attempt waited for the hanging lookup")
    }
}
