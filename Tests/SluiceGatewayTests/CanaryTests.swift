import Foundation
import SluiceCore
import Testing
import TestSupport

/// `canary:` on a route over real sockets (SPEC §7): listed partners and a hashed share go to the
/// canary upstream, its error rate aborts it until a reload, and tasks record their upstream.
struct CanaryTests {
    /// GET /v2/canary/{code} → /status/{code} on `main`, or on `next` for acme (listed).
    private static let route = """
        { id: canary-status, versions: [v2], method: GET, path: "/canary/{code}", upstream: main, upstream_path: "/status/{code}", \
        canary: { upstream: next, share: 0%, partners: [acme], abort_on: { error_rate: 50%, min_calls: 4 } } }
        """
    private static let asyncRoute = """
        { id: canary-price, versions: [v2], method: POST, path: /canary-price, upstream: main, upstream_path: /price, async: always, \
        canary: { upstream: next, share: 0%, partners: [acme] } }
        """

    private func withCanary(_ body: (GatewayHarness) async throws -> Void) async throws {
        try await withDemoUpstream { next in
            try await GatewayHarness.with({ policies in
                policies.upstreams["next"] = "url: http://127.0.0.1:\(next)"
                policies.addRoutes(Self.route, Self.asyncRoute)
            }, body)
        }
    }

    /// The upstream each access-log line of route `route` names, in order.
    private func upstreams(_ gateway: GatewayHarness, route: String = "canary-status") throws -> [String] {
        try gateway.logLines().filter { $0["route"] as? String == route && $0["status"] != nil }.map { $0["upstream"] as? String ?? "none" }
    }

    @Test func listedPartnersGoToTheCanaryUntilItsErrorRateAbortsIt() async throws {
        try await withCanary { gateway in
            #expect(try await gateway.partner(.GET, "/v2/canary/200").status == 200)
            #expect(try await gateway.partner(.GET, "/v2/canary/200", key: TestKeys.globex).status == 200)
            #expect(try upstreams(gateway) == ["next", "main"])

            // The canary fails: 3 of 4 calls over 50 % → aborted by the fourth call, once.
            for code in [500, 200, 503, 500] {
                #expect(try await gateway.partner(.GET, "/v2/canary/\(code)").status == code)
            }
            #expect(try await gateway.metric(#"sluice_canary_aborts_total{route="canary-status"}"#) == 1)
            let aborted = try gateway.logLines().filter { $0["message"] as? String == "canary aborted: its calls go to the route's upstream until a policy reload" }
            #expect(aborted.count == 1 && aborted.first?["canary_upstream"] as? String == "next")
            #expect(try await gateway.partner(.GET, "/v2/canary/200").status == 200)
            let seen = try upstreams(gateway)
            #expect(seen.suffix(2) == ["next", "main"], "after the abort acme is on the route's upstream: \(seen)")

            // A reload makes a new split: acme is on the canary again.
            let reload = try await gateway.send(.POST, gateway.admin + "/admin/policies/reload", key: TestKeys.operatorToken)
            #expect(reload.status == 200)
            #expect(try await gateway.partner(.GET, "/v2/canary/200").status == 200)
            #expect(try upstreams(gateway).last == "next")
            #expect(try await gateway.metric(#"sluice_canary_aborts_total{route="canary-status"}"#) == 1)
        }
    }

    @Test func twoInstancesPutEachPartnerOnTheSameSide() async throws {
        // A share between the two partners' buckets: one is on the canary, the other is not.
        let (acme, globex) = (CanarySplit.bucket(of: "acme"), CanarySplit.bucket(of: "globex"))
        let share = String(format: "%.2f%%", Double(max(acme, globex)) / 100)
        let onCanary = acme < globex ? "acme" : "globex"
        let route = "{ id: canary-share, versions: [v2], method: GET, path: /share, upstream: main, upstream_path: /api/echo, canary: { upstream: next, share: \(share) } }"
        try await withDemoUpstream { next in
            let configure: (inout TestPolicies) -> Void = { policies in
                policies.upstreams["next"] = "url: http://127.0.0.1:\(next)"
                policies.addRoutes(route)
            }
            try await GatewayHarness.with(configure) { first in
                try await GatewayHarness.with(configure) { second in
                    for gateway in [first, second] {
                        for key in [TestKeys.acme, TestKeys.globex] {
                            for _ in 0..<3 { #expect(try await gateway.partner(.GET, "/v2/share", key: key).status == 200) }
                        }
                        let sides = try gateway.logLines().filter { $0["route"] as? String == "canary-share" && $0["status"] != nil }
                            .reduce(into: [String: Set<String>]()) { sides, line in
                                sides[line["partner"] as? String ?? "", default: []].insert(line["upstream"] as? String ?? "")
                            }
                        #expect(sides == [onCanary: ["next"], (onCanary == "acme" ? "globex" : "acme"): ["main"]], "share \(share): \(sides)")
                    }
                }
            }
        }
    }

    @Test func aTaskRecordsTheUpstreamThatRunsIt() async throws {
        try await withCanary { gateway in
            for (key, upstream) in [(TestKeys.acme, "next"), (TestKeys.globex, "main")] {
                let accepted = try await gateway.acceptTask("/v2/canary-price", key: key)
                #expect(accepted.status == 202)
                let location = try #require(accepted.header("Location"))
                var document: [String: Any] = [:]
                try await eventually("the task finishes") {
                    document = try await gateway.partner(.GET, location, key: key).json()
                    return document["status"] as? String == "succeeded"
                }
                #expect(document["upstream"] as? String == upstream)
                let first = try #require((document["history"] as? [[String: Any]])?.first)
                #expect((first["note"] as? String ?? "").contains("canary") == (upstream == "next"), "\(first)")
            }
        }
    }
}
