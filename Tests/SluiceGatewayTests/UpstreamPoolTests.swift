import AsyncHTTPClient
import Foundation
import NIOHTTP1
import SluiceGateway
import Synchronization
import Testing
import TestSupport

/// Upstream pools over real sockets (SPEC §7, issue 25): three demo upstreams behind one
/// upstream, the access log's `target` field saying which one answered.
@Suite(.serialized)
struct UpstreamPoolTests {
    /// The pool's route: GET /v2/pool/{code} → /status/{code} on a target; /v2/pool → /api/echo.
    private static let routes = [
        "{ id: pool, versions: [v2], method: GET, path: /pool, upstream: pool, upstream_path: /api/echo }",
        "{ id: pool-status, versions: [v2], method: GET, path: \"/pool/{code}\", upstream: pool, upstream_path: \"/status/{code}\" }",
        "{ id: pool-slow, versions: [v2], method: GET, path: /pool-slow, upstream: pool, upstream_path: /slow }",
    ]

    /// Runs a gateway whose upstream `pool` has `targets` (URLs, with weights when given) and
    /// the extra `settings` lines.
    private func withPool(
        _ targets: [(url: String, weight: Int)], settings: String = "", _ body: (GatewayHarness) async throws -> Void
    ) async throws {
        try await GatewayHarness.with({ policies in
            policies.upstreams["pool"] = Self.upstream(targets, settings: settings)
            policies.addRoutes(Self.routes[0], Self.routes[1], Self.routes[2])
        }, body)
    }

    private static func upstream(_ targets: [(url: String, weight: Int)], settings: String) -> String {
        "targets:\n" + targets.map { "  - { url: \($0.url), weight: \($0.weight) }\n" }.joined() + settings
    }

    /// How many access-log lines of route `pool` name each target.
    private func answered(_ gateway: GatewayHarness, route: String = "pool") throws -> [String: Int] {
        try gateway.logLines().filter { $0["route"] as? String == route && $0["status"] != nil }.reduce(into: [:]) { counts, line in
            counts[line["target"] as? String ?? "none", default: 0] += 1
        }
    }

    /// Sends `count` GETs to `path`, `concurrency` at a time; returns the statuses seen.
    private func send(_ gateway: GatewayHarness, _ path: String, count: Int, concurrency: Int = 6, key: String = TestKeys.acme) async throws -> [Int: Int] {
        try await withThrowingTaskGroup(of: [Int: Int].self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var statuses: [Int: Int] = [:]
                    for _ in stride(from: worker, to: count, by: concurrency) {
                        statuses[try await gateway.partner(.GET, path, key: key).status, default: 0] += 1
                    }
                    return statuses
                }
            }
            return try await group.reduce(into: [:]) { all, part in all.merge(part, uniquingKeysWith: +) }
        }
    }

    private func upstreamStatus(_ gateway: GatewayHarness) async throws -> [[String: Any]] {
        let response = try await gateway.send(.GET, gateway.admin + "/admin/upstreams", key: TestKeys.viewerToken)
        #expect(response.status == 200)
        let upstreams = try #require(try response.json()["upstreams"] as? [[String: Any]])
        let pool = try #require(upstreams.first { $0["name"] as? String == "pool" })
        return try #require(pool["targets"] as? [[String: Any]])
    }

    private func state(of label: String, _ gateway: GatewayHarness) async throws -> String? {
        try await upstreamStatus(gateway).first { $0["target"] as? String == label }?["state"] as? String
    }

    // MARK: - Spread

    @Test(arguments: ["least_request", "round_robin"])
    func callsSpreadByWeight(balancer: String) async throws {
        try await withDemoUpstream { a in
            try await withDemoUpstream { b in
                try await withDemoUpstream { c in
                    let targets = [("http://127.0.0.1:\(a)", 1), ("http://127.0.0.1:\(b)", 2), ("http://127.0.0.1:\(c)", 3)]
                    try await withPool(targets, settings: "balancer: \(balancer)") { gateway in
                        // Calls of 20 ms: a starved machine's scheduling delays stay small beside
                        // them, so least_request sees no target as markedly slower and spreads by
                        // weight alone (its latency rule has unit tests of its own; at 5 ms, a run
                        // with the CPU busy put one target 69 calls off its 200 ± 60).
                        #expect(try await send(gateway, "/v2/pool-slow?ms=20", count: 600) == [200: 600])
                        let counts = try answered(gateway, route: "pool-slow")
                        for (url, weight) in targets {
                            let expected = 100.0 * Double(weight)
                            let seen = Double(counts[url] ?? 0)
                            #expect(abs(seen - expected) <= expected * 0.3, "\(balancer): \(url) (weight \(weight)) answered \(seen) of 600: \(counts)")
                        }
                    }
                }
            }
        }
    }

    @Test func partnerHashKeepsEachPartnerOnOneTarget() async throws {
        try await withDemoUpstream { a in
            try await withDemoUpstream { b in
                try await withDemoUpstream { c in
                    let targets = [a, b, c].map { ("http://127.0.0.1:\($0)", 1) }
                    try await withPool(targets, settings: "balancer: partner_hash") { gateway in
                        for key in [TestKeys.acme, TestKeys.globex] {
                            let before = try answered(gateway)
                            #expect(try await send(gateway, "/v2/pool", count: 30, key: key) == [200: 30])
                            let after = try answered(gateway)
                            let moved = after.filter { $0.value != before[$0.key] }
                            #expect(moved.count == 1, "one partner, one target: \(before) → \(after)")
                        }
                    }
                }
            }
        }
    }

    // MARK: - Passive health

    @Test func aKilledTargetCostsNoFailedGETAndComesBackAfterARestart() async throws {
        let doomed = try TargetProcess()
        try await doomed.start()
        try await withDemoUpstream { a in
            try await withDemoUpstream { b in
                let targets = [("http://127.0.0.1:\(a)", 1), ("http://127.0.0.1:\(b)", 1), (doomed.url, 1)]
                let health = "health:\n  passive: { consecutive_failures: 2, ejection: 200ms, max_ejection: 400ms }"
                try await withPool(targets, settings: health) { gateway in
                    let load = LoadCounts()
                    try await withThrowingTaskGroup(of: Void.self) { workers in
                        for _ in 0..<4 {
                            workers.addTask {
                                while load.running.load(ordering: .relaxed) {
                                    let status = try await gateway.partner(.GET, "/v2/pool").status
                                    load.sent.add(1, ordering: .relaxed)
                                    if status != 200 { load.failures.add(1, ordering: .relaxed) }
                                }
                            }
                        }
                        try await eventually("the doomed target answers under load") { try answered(gateway)[doomed.label, default: 0] >= 30 }
                        try await doomed.kill()
                        let atKill = load.sent.load(ordering: .relaxed)
                        try await eventually("the killed target is ejected") {
                            try await gateway.metric(
                                #"sluice_upstream_ejections_total{upstream="pool",target="\#(doomed.label)",reason="consecutive-failures"}"#
                            ) ?? 0 >= 1
                        }
                        try await eventually("load goes on without it") { load.sent.load(ordering: .relaxed) >= atKill + 100 }
                        let beforeRestart = try answered(gateway)[doomed.label, default: 0]
                        try await doomed.start()
                        try await eventually("the restarted target takes calls again") {
                            try answered(gateway)[doomed.label, default: 0] >= beforeRestart + 10
                        }
                        load.running.store(false, ordering: .relaxed)
                        try await workers.waitForAll()
                    }
                    #expect(load.failures.load(ordering: .relaxed) == 0, "of \(load.sent.load(ordering: .relaxed)) GETs")
                    #expect(try await state(of: doomed.label, gateway) == "healthy")
                }
            }
        }
    }

    /// GETs already sent to a target that is killed before it answers are answered by another
    /// target (one try elsewhere); a POST in the same spot is a 502 (it may not go twice).
    @Test func callsInFlightOnAKilledTargetGoElsewhereWhenTheyMayGoTwice() async throws {
        let doomed = try TargetProcess()
        try await doomed.start()
        try await withDemoUpstream { other in
            try await GatewayHarness.with({ policies in
                policies.upstreams["pool"] = Self.upstream([(doomed.url, 1), ("http://127.0.0.1:\(other)", 1)], settings: "")
                policies.addRoutes(
                    "{ id: pool-slow, versions: [v2], method: GET, path: /pool-slow, upstream: pool, upstream_path: /slow }",
                    "{ id: pool-slow-post, versions: [v2], method: POST, path: /pool-slow, upstream: pool, upstream_path: /slow }"
                )
            }) { gateway in
                let calls = Task {
                    try await withThrowingTaskGroup(of: (String, Int).self) { group in
                        for index in 0..<8 {
                            let method: HTTPMethod = index < 6 ? .GET : .POST
                            group.addTask { (method.rawValue, try await gateway.partner(method, "/v2/pool-slow?ms=1500").status) }
                        }
                        return try await group.reduce(into: [String: [Int: Int]]()) { $0[$1.0, default: [:]][$1.1, default: 0] += 1 }
                    }
                }
                try await eventually("calls wait on both targets") {
                    let inFlight = try await self.upstreamStatus(gateway).compactMap { $0["in_flight"] as? Int }
                    return inFlight.count == 2 && inFlight.allSatisfy { $0 >= 1 } && inFlight.reduce(0, +) == 8
                }
                let onDoomed = try await upstreamStatus(gateway).first { $0["target"] as? String == doomed.label }?["in_flight"] as? Int ?? 0
                try await doomed.kill()
                let statuses = try await calls.value
                #expect(statuses["GET"] == [200: 6], "\(statuses), \(onDoomed) on the killed target")
                #expect((statuses["POST"]?[200] ?? 0) + (statuses["POST"]?[502] ?? 0) == 2, "\(statuses)")
            }
        }
    }

    @Test func fourHundredsNeverEject() async throws {
        try await withDemoUpstream { a in
            try await withDemoUpstream { b in
                let targets = [("http://127.0.0.1:\(a)", 1), ("http://127.0.0.1:\(b)", 1)]
                let health = "health:\n  passive: { consecutive_failures: 2, ejection: 1m }"
                try await withPool(targets, settings: health) { gateway in
                    for code in [404, 429] {
                        #expect(try await send(gateway, "/v2/pool/\(code)", count: 20, concurrency: 1) == [code: 20])
                    }
                    let ejections = try await gateway.send(.GET, gateway.admin + "/metrics", key: nil).text
                        .split(separator: "\n").filter { $0.hasPrefix("sluice_upstream_ejections_total{") }
                    #expect(ejections.isEmpty, "\(ejections)")
                    #expect(try await upstreamStatus(gateway).map { $0["state"] as? String } == ["healthy", "healthy"])

                    // 503 is the gateway-visible failure: a flood of it ejects one target
                    // (max_ejected 50 % of two), never both.
                    #expect(try await send(gateway, "/v2/pool/503", count: 20, concurrency: 1) == [503: 20])
                    let states = try await upstreamStatus(gateway).map { $0["state"] as? String }
                    #expect(states.sorted { ($0 ?? "") < ($1 ?? "") } == ["ejected", "healthy"], "\(states)")
                }
            }
        }
    }

    // MARK: - Active health

    @Test func aHungTargetIsEjectedByProbesAndComesBack() async throws {
        let hung = try TargetProcess()
        try await hung.start()
        try await withDemoUpstream { a in
            try await withDemoUpstream { b in
                let targets = [("http://127.0.0.1:\(a)", 1), ("http://127.0.0.1:\(b)", 1), (hung.url, 1)]
                let health = "health:\n  active: { path: /healthz, interval: 200ms, timeout: 200ms, healthy: 2, unhealthy: 2 }"
                try await withPool(targets, settings: health) { gateway in
                    try await eventually("probes reached every target") {
                        try await upstreamStatus(gateway).allSatisfy { ($0["last_probe"] as? [String: Any])?["good"] as? Bool == true }
                    }
                    hung.stop()
                    let stopped = ContinuousClock.now
                    try await eventually("the hung target is down") { try await state(of: hung.label, gateway) == "down" }
                    // interval × unhealthy + one timeout = 600 ms; the rest is this machine's slack.
                    #expect(ContinuousClock.now - stopped < .seconds(5))
                    let ejections = #"sluice_upstream_ejections_total{upstream="pool",target="\#(hung.label)",reason="probes"}"#
                    #expect(try await gateway.metric(ejections) == 1)
                    #expect(try await gateway.metric(#"sluice_upstream_target_healthy{upstream="pool",target="\#(hung.label)"}"#) == 0)

                    let before = try answered(gateway)[hung.label, default: 0]
                    #expect(try await send(gateway, "/v2/pool", count: 30) == [200: 30])
                    #expect(try answered(gateway)[hung.label, default: 0] == before, "no call goes to a target that is down")

                    hung.resume()
                    try await eventually("the target is back after two good probes") { try await state(of: hung.label, gateway) == "healthy" }
                }
            }
        }
    }

    @Test func anUpstreamWithNoUsableTargetAnswers503() async throws {
        let nobody = try freePort()
        try await GatewayHarness.with({ policies in
            policies.upstreams["pool"] = Self.upstream(
                [("http://127.0.0.1:\(nobody)", 1)],
                settings: "health:\n  active: { path: /healthz, interval: 100ms, timeout: 100ms, healthy: 1, unhealthy: 1 }\npanic_threshold: 0%"
            )
            policies.addRoutes(Self.routes[0])
        }) { gateway in
            try await eventually("the only target is down") { try await state(of: "http://127.0.0.1:\(nobody)", gateway) == "down" }
            let response = try await gateway.partner(.GET, "/v2/pool")
            try expectProblem(response, 503, "upstream-unavailable", path: "/v2/pool")
            #expect(response.header("Retry-After") != nil)
            #expect(try await gateway.metric(#"sluice_upstream_no_target_total{upstream="pool"}"#) == 1)
        }
    }

    // MARK: - Names

    @Test func aNameStandsForEveryAddressAndFollowsItsChanges() async throws {
        let dns = FakeDNS()
        let port = try freePort()
        try await withDemoUpstream(host: "127.0.0.1", port: port) { _ in
            try await withDemoUpstream(host: "127.0.0.2", port: port) { _ in
                try await withDemoUpstream(host: "127.0.0.3", port: port) { _ in
                    dns.answer("pricing.test", ["127.0.0.1", "127.0.0.2"])
                    try await GatewayHarness.with({ policies in
                        policies.upstreams["pool"] = "targets:\n  - { url: http://pricing.test:\(port) }\ndns_refresh: 100ms\n"
                            + "health:\n  active: { path: /healthz, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }"
                        policies.addRoutes(Self.routes[0], Self.routes[2])
                    }, resolver: dns.resolver) { gateway in
                        func label(_ ip: String) -> String { "http://pricing.test:\(port) (\(ip))" }
                        #expect(try await upstreamStatus(gateway).compactMap { $0["target"] as? String } == [label("127.0.0.1"), label("127.0.0.2")])
                        try await eventually("each address is probed") {
                            try await upstreamStatus(gateway).allSatisfy { ($0["last_probe"] as? [String: Any])?["good"] as? Bool == true }
                        }
                        #expect(try await send(gateway, "/v2/pool", count: 40) == [200: 40])
                        let first = try answered(gateway)
                        #expect(first[label("127.0.0.1"), default: 0] > 0 && first[label("127.0.0.2"), default: 0] > 0, "\(first)")

                        // Calls in flight when their address goes away finish; new ones go to the new addresses.
                        try await withThrowingTaskGroup(of: Int.self) { slow in
                            for _ in 0..<4 { slow.addTask { try await gateway.partner(.GET, "/v2/pool-slow?ms=500").status } }
                            try await eventually("the slow calls are in flight") {
                                try await upstreamStatus(gateway).reduce(0) { $0 + ($1["in_flight"] as? Int ?? 0) } == 4
                            }
                            dns.answer("pricing.test", ["127.0.0.2", "127.0.0.3"])
                            try await eventually("the pool follows the name") {
                                try await upstreamStatus(gateway).compactMap { $0["target"] as? String } == [label("127.0.0.2"), label("127.0.0.3")]
                            }
                            #expect(try await slow.reduce(into: [Int]()) { $0.append($1) } == [200, 200, 200, 200])
                        }
                        let before = try answered(gateway)
                        #expect(try await send(gateway, "/v2/pool", count: 40) == [200: 40])
                        let after = try answered(gateway)
                        #expect(after[label("127.0.0.1")] == before[label("127.0.0.1")], "the removed address gets no new call")
                        #expect(after[label("127.0.0.3"), default: 0] > 0, "\(after)")

                        // A name that resolves to nothing keeps its last addresses.
                        dns.answer("pricing.test", [])
                        try await eventually("the empty answer was seen") {
                            try gateway.logLines().contains { $0["message"] as? String == "upstream target name resolved to nothing; its last addresses stay" }
                        }
                        #expect(try await upstreamStatus(gateway).count == 2)
                        #expect(try await send(gateway, "/v2/pool", count: 10) == [200: 10])
                    }
                }
            }
        }
    }

    @Test func aNameThatDoesNotResolveYetIsAWarningAnd503sUntilItDoes() async throws {
        let dns = FakeDNS()
        try await withDemoUpstream { port in
            try await GatewayHarness.with({ policies in
                policies.upstreams["pool"] = "url: http://later.test:\(port)\ndns_refresh: 100ms"
                policies.addRoutes(Self.routes[0])
            }, resolver: dns.resolver) { gateway in
                #expect(try gateway.logLines().contains {
                    $0["message"] as? String == "upstream target name does not resolve; it has no target until it does" && $0["name"] as? String == "later.test"
                })
                let early = try await gateway.partner(.GET, "/v2/pool")
                try expectProblem(early, 503, "upstream-unavailable", path: "/v2/pool")
                #expect(early.header("Retry-After") != nil)
                dns.answer("later.test", ["127.0.0.1"])
                try await eventually("the name resolves") { try await gateway.partner(.GET, "/v2/pool").status == 200 }
            }
        }
    }

    /// A reload that names a host never resolved before looks it up on NIO's blocking-I/O
    /// thread pool, never on a Swift task thread (a hanging DNS server would otherwise hold up
    /// task workers, webhooks and the admin API with it); the reload applies the new target once
    /// the lookup answers.
    @Test func aReloadLooksUpANewNameOffTheTaskThreads() async throws {
        let dns = FakeDNS()
        try await withDemoUpstream { port in
            try await GatewayHarness.with({ policies in
                policies.upstreams["pool"] = "url: http://127.0.0.1:\(port)"
                policies.addRoutes(Self.routes[0])
            }, resolver: dns.resolver) { gateway in
                dns.answer("moved.test", ["127.0.0.1"])
                dns.hold("moved.test")
                var upstreams = gateway.policies
                upstreams.upstreams["pool"] = "url: http://moved.test:\(port)"
                try gateway.policies.rewrite("upstreams.yaml", upstreams.upstreamsFile)
                async let reload = gateway.send(.POST, gateway.admin + "/admin/policies/reload", key: TestKeys.operatorToken)
                try await eventually("the name is being looked up") { !dns.lookupThreads("moved.test").isEmpty }
                #expect(try await gateway.partner(.GET, "/v2/pool").status == 200, "the running policies serve meanwhile")
                dns.release("moved.test")
                #expect(try await reload.status == 200)
                let threads = dns.lookupThreads("moved.test")
                #expect(!threads.isEmpty && threads.allSatisfy { $0.contains("TP-#") }, "looked up on \(threads)")
                #expect(try await upstreamStatus(gateway).compactMap { $0["target"] as? String } == ["http://moved.test:\(port) (127.0.0.1)"])
                #expect(try await gateway.partner(.GET, "/v2/pool").status == 200)
            }
        }
    }

    // MARK: - Reload

    @Test func aReloadAddingATargetKeepsTheOthersHealth() async throws {
        let dead = "http://127.0.0.1:\(try freePort())"
        try await withDemoUpstream { a in
            try await withDemoUpstream { b in
                let health = "health:\n  passive: { consecutive_failures: 1, ejection: 1m }"
                let before = [("http://127.0.0.1:\(a)", 1), (dead, 1)]
                try await withPool(before, settings: health) { gateway in
                    // Connect errors fail over to the live target: the partner sees none of them.
                    #expect(try await send(gateway, "/v2/pool", count: 20, concurrency: 1) == [200: 20])
                    #expect(try await state(of: dead, gateway) == "ejected")

                    var upstreams = gateway.policies
                    upstreams.upstreams["pool"] = Self.upstream(before + [("http://127.0.0.1:\(b)", 1)], settings: health)
                    try gateway.policies.rewrite("upstreams.yaml", upstreams.upstreamsFile)
                    let reload = try await gateway.send(.POST, gateway.admin + "/admin/policies/reload", key: TestKeys.operatorToken)
                    #expect(reload.status == 200)

                    let targets = try await upstreamStatus(gateway)
                    #expect(targets.count == 3)
                    let deadAfter = try #require(targets.first { $0["target"] as? String == dead })
                    #expect(deadAfter["state"] as? String == "ejected" && deadAfter["ejections"] as? Int == 1, "\(deadAfter)")
                    #expect(targets.filter { $0["state"] as? String == "healthy" }.count == 2)
                }
            }
        }
    }
}

/// What the load of a test's workers saw.
private final class LoadCounts: Sendable {
    let sent = Atomic<Int>(0)
    let failures = Atomic<Int>(0)
    let running = Atomic<Bool>(true)
}

/// A resolver the test answers for: each name stands for the addresses the test set last. A
/// held name's lookups hang (as with a DNS server that does not answer) until it is released,
/// or for 10 s at most; the names of the threads they ran on are kept.
private final class FakeDNS: Sendable {
    private let answers = Mutex<[String: [String]]>([:])
    private let held = Mutex<Set<String>>([])
    private let threads = Mutex<[String: [String]]>([:])

    func answer(_ name: String, _ addresses: [String]) {
        answers.withLock { $0[name] = addresses }
    }

    func hold(_ name: String) { _ = held.withLock { $0.insert(name) } }
    func release(_ name: String) { _ = held.withLock { $0.remove(name) } }

    /// The threads `name` was looked up on, in order.
    func lookupThreads(_ name: String) -> [String] { threads.withLock { $0[name] ?? [] } }

    var resolver: HostResolver {
        { name in
            let thread = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines) ?? "?"
            self.threads.withLock { $0[name, default: []].append(thread) }
            let giveUp = ContinuousClock.now + .seconds(10)
            while self.held.withLock({ $0.contains(name) }), ContinuousClock.now < giveUp { usleep(1_000) }
            return self.answers.withLock { $0[name] ?? [] }
        }
    }
}
