import Testing
@testable import SluiceCore

/// One fixture folder per kind of policy error; each must give exactly these `FILE:LINE:COL` lines.
struct PolicyErrorTests {
    static let cases: [(fixture: String, problems: [String])] = [
        ("unknown-key", [
            "policies/gateway.yaml:1:1: listen needs https or http (or both) for partner traffic",
            "policies/gateway.yaml:2:3: unknown key 'htps' in listen (did you mean 'https'?)",
        ]),
        ("wrong-type", ["policies/upstreams.yaml:8:20: expected an integer for upstream 'pricing' max_in_flight, got 'many'"]),
        ("bad-duration", [
            "policies/upstreams.yaml:6:22: expected a duration like 250ms, 5s, 2m, 1h or 30d for upstream 'pricing' connect_timeout, got '1 second'"
        ]),
        ("bad-idempotency-retention", [
            "policies/gateway.yaml:23:14: idempotency.retention must be at least 1s",
            "policies/gateway.yaml:24:3: unknown key 'retain' in idempotency",
        ]),
        ("bad-usage-and-tracing", [
            "policies/gateway.yaml:32:14: usage.retention must be at least 1d (usage is counted per day)",
            "policies/gateway.yaml:34:18: tracing.otlp_endpoint must be an http:// or https:// URL with a host, got 'ftp://collector:4318'",
            "policies/gateway.yaml:35:18: tracing.otlp_protocol must be one of http/protobuf, http/json, got 'grpc'",
            "policies/gateway.yaml:36:17: tracing.service_name must be 1-128 printable characters",
            "policies/gateway.yaml:37:17: tracing.sample_ratio must be a number from 0 to 1, got '2'",
        ]),
        ("bad-size", ["policies/gateway.yaml:14:21: expected a size like 512KiB or 10MiB for limits.max_request_body, got '10MB'"]),
        ("bad-percentage", [
            "policies/upstreams.yaml:13:21: expected a percentage from 0% to 100% like 50% for upstream 'pricing' circuit_breaker failure_rate, got '0.5'"
        ]),
        ("bad-enum", ["policies/routes.yaml:23:12: route 'price' async must be one of always, on-request, never, got 'sometimes'"]),
        ("bad-listen-address", ["policies/gateway.yaml:4:10: expected HOST:PORT for listen.admin, got 'localhost'"]),
        ("bad-trusted-proxies", [
            "policies/gateway.yaml:5:33: listen.trusted_proxies: expected an address or CIDR network like 10.0.0.0/8 or 2001:db8::/32, got '192.168.1.300'",
            "policies/gateway.yaml:5:48: listen.trusted_proxies: expected an address or CIDR network like 10.0.0.0/8 or 2001:db8::/32, got '2001:db8::/129'",
        ]),
        ("bad-redis-url", ["policies/gateway.yaml:10:10: store.redis: scheme must be redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster, got 'http'"]),
        ("bad-cluster", [
            "policies/gateway.yaml:10:10: store.redis: a Redis Cluster has database 0 only, got '/2'",
            "policies/gateway.yaml:24:11: tasks.shards must be at least 1, got 0",
        ]),
        ("bad-sentinel", [
            "policies/gateway.yaml:10:10: store.redis: sentinel port must be 1-65535, got '70000'",
            "policies/gateway.yaml:11:15: store.durability must be one of primary, replicated, got 'always'",
            "policies/gateway.yaml:12:20: store.replica_timeout must be more than 0 and at most 10s",
        ]),
        ("bad-path-template", [
            "policies/routes.yaml:15:11: route 'get-order' path: path '/orders/{id': a parameter must be a whole segment like {id}, got '{id'"
        ]),
        ("missing-required", ["policies/partners/globex.yaml:1:1: missing required key 'plan' in a partner file"]),
        ("bad-targets", [
            "policies/upstreams.yaml:5:7: upstream 'orders' has both url and targets: give one (url is the one-target shorthand)",
            "policies/upstreams.yaml:7:14: upstream 'pricing' targets must list 1 to 64 targets, got 0",
            "policies/upstreams.yaml:10:47: upstream 'shop' target weight must be at least 1, got 0",
            "policies/upstreams.yaml:11:47: expected an integer for upstream 'shop' target weight, got 'heavy'",
            "policies/upstreams.yaml:13:9: upstream 'shop' lists the target http://127.0.0.1:9105 twice",
            "policies/upstreams.yaml:16:15: upstream 'mes' balancer must be one of least_request, round_robin, partner_hash, got 'random'",
            "policies/upstreams.yaml:18:27: upstream 'mes' health active interval must be greater than 0",
            "policies/upstreams.yaml:18:40: upstream 'mes' health active healthy must be at least 1, got 0",
            "policies/upstreams.yaml:19:31: expected a percentage from 0% to 100% like 50% for upstream 'mes' health passive max_ejected, got '150%'",
            "policies/upstreams.yaml:20:22: expected a percentage from 0% to 100% like 50% for upstream 'mes' panic_threshold, got '120%'",
        ]),
        ("bad-canary", [
            "policies/routes.yaml:11:25: route 'create-order' canary names unknown upstream 'orders-next'",
            "policies/routes.yaml:17:25: route 'get-order' canary upstream 'orders' is the route's own upstream",
            "policies/routes.yaml:26:14: expected a percentage from 0% to 100% like 50% for route 'price' canary share, got '150%'",
            "policies/routes.yaml:27:24: route 'price' canary names unknown partner 'nobody'",
            "policies/routes.yaml:28:46: route 'price' canary abort_on min_calls must be at least 1, got 0",
        ]),
        ("bad-cache", [
            "policies/routes.yaml:11:12: route 'create-order' cache applies to GET and HEAD routes only, not POST",
            "policies/routes.yaml:17:19: route 'get-order' cache ttl must be greater than 0",
            "policies/routes.yaml:17:30: route 'get-order' cache scope must be one of partner, shared, got 'everyone'",
            "policies/routes.yaml:17:50: route 'get-order' cache max_body must be at most 64MiB",
            "policies/routes.yaml:17:64: route 'get-order' cache vary: 'Accept Language' is not a header name",
            "policies/routes.yaml:23:47: expected a duration like 250ms, 5s, 2m, 1h or 30d for route 'list-orders' cache stale_while_revalidate, got '-5s'",
            "policies/routes.yaml:23:68: expected a duration like 250ms, 5s, 2m, 1h or 30d for route 'list-orders' cache stale_if_error, got 'forever'",
            "policies/routes.yaml:23:77: unknown key 'max_age' in route 'list-orders' cache",
        ]),
        ("bad-dedupe", [
            "policies/routes.yaml:11:13: route 'create-order' dedupe applies to async routes only (async: always or on-request)",
            "policies/routes.yaml:23:13: route 'price' dedupe must be greater than 0",
            "policies/routes.yaml:30:13: expected a duration like 250ms, 5s, 2m, 1h or 30d for route 'quote' dedupe, got 'a while'",
        ]),
        ("bad-slo", [
            "policies/routes.yaml:11:10: route 'get-order' slo needs a target: p95, p99 or both (like p95: 10m)",
            "policies/routes.yaml:11:12: unknown key 'p90' in route 'get-order' slo (did you mean 'p95'?)",
            "policies/routes.yaml:18:17: route 'price' slo p95 must be greater than 0",
            "policies/routes.yaml:18:26: expected a duration like 250ms, 5s, 2m, 1h or 30d for route 'price' slo p99, got 'soon'",
            "policies/routes.yaml:24:10: route 'quote' slo needs a target: p95, p99 or both (like p95: 10m)",
        ]),
        ("route-unknown-upstream", ["policies/routes.yaml:22:15: route 'price' names unknown upstream 'pricng'"]),
        ("route-unknown-version", ["policies/routes.yaml:19:16: route 'price' names unknown version 'v3'"]),
        ("unknown-route-upstream-param", [
            "policies/routes.yaml:17:20: route 'get-order' upstream_path uses {order}, which path does not capture"
        ]),
        ("partner-unknown-plan", ["policies/partners/globex.yaml:3:7: partner 'globex' names unknown plan 'platinum'"]),
        ("partner-unknown-version", ["policies/partners/globex.yaml:4:16: partner 'globex' names unknown version 'v9'"]),
        ("duplicate-route-id", ["policies/routes.yaml:12:5: route id 'create-order' is already used at policies/routes.yaml:6:5"]),
        ("duplicate-partner-id", ["policies/partners/globex.yaml:1:1: partner id 'acme' is already used by policies/partners/acme.yaml"]),
        ("duplicate-key-hash", [
            "policies/partners/globex.yaml:6:25: key 'main' of partner 'globex' has the same sha256 as a key of partner 'acme'"
        ]),
        ("bad-key-hash", [
            "policies/partners/globex.yaml:6:25: key sha256 must be 64 hex characters (the SHA-256 of the secret), got 63 characters"
        ]),
        ("sunset-before-deprecation", ["policies/routes.yaml:3:64: version 'v1' sunset is before its deprecated_at date"]),
        ("deprecated-without-date", ["policies/routes.yaml:3:7: version 'v1' is deprecated but has no deprecated_at date"]),
        ("duplicate-method-path", [
            "policies/routes.yaml:27:5: route 'fetch-order': GET /orders/{order_id} in v2 is already served by route 'get-order'"
        ]),
        ("missing-env-secret", [
            "policies/partners/acme.yaml:11:11: partner 'acme' webhook secret: environment variable ACME_HOOK_SECRET_TYPO is not set"
        ]),
        ("bad-webhook-secret", [
            "policies/partners/acme.yaml:11:11: partner 'acme' webhook secret must be 'whsec_' followed by base64 of 24 to 64 bytes (Standard Webhooks)"
        ]),
        ("invalid-yaml", ["policies/plans.yaml:8:10: invalid YAML: did not find expected ',' or '}'"]),
        ("duplicate-yaml-key", ["policies/plans.yaml:5:5: duplicate key 'concurrency' in a mapping"]),
        ("several-problems", [
            "policies/gateway.yaml:17:17: expected a duration like 250ms, 5s, 2m, 1h or 30d for limits.idle_timeout, got 'soon'",
            "policies/partners/globex.yaml:3:7: partner 'globex' names unknown plan 'bronze'",
            "policies/routes.yaml:22:15: route 'price' names unknown upstream 'nowhere'",
        ]),
    ]

    /// Each fixture reports exactly its problems, all of them, sorted by position.
    @Test(arguments: cases)
    func fixtureReportsItsProblems(_ example: (fixture: String, problems: [String])) {
        #expect(PolicyFixtures.problems(example.fixture) == example.problems)
    }

    /// Every fixture folder has an expectation, so a new fixture cannot go untested.
    @Test func everyFixtureFolderIsCovered() throws {
        let folders = try FileManager.default.contentsOfDirectory(
            atPath: PolicyFixtures.root.appendingPathComponent("errors").path
        )
        #expect(Set(folders) == Set(Self.cases.map(\.fixture)))
    }

    /// A missing required file is reported once, without cascading into every route that names an upstream.
    @Test func missingFileIsReportedOnce() {
        let sources = PolicyFixtures.sources().filter { $0.relativePath != "upstreams.yaml" }
        do {
            _ = try PolicyFixtures.load(sources)
            Issue.record("expected an error")
        } catch {
            #expect(error.problems.map(\.description) == ["policies/upstreams.yaml:1:1: required policy file is missing"])
        }
    }

    /// TLS files named by gateway.yaml must exist.
    @Test func unreadableCertificateIsReported() {
        do {
            _ = try PolicySet.parse(
                sources: PolicyFixtures.sources(), directory: "policies", environment: PolicyFixtures.environment,
                fileExists: { !$0.hasSuffix("dev.key") }
            )
            Issue.record("expected an error")
        } catch {
            let path = URL(fileURLWithPath: "certs/dev.key").standardizedFileURL.path
            #expect(error.problems.map(\.description) == ["policies/gateway.yaml:7:8: tls.key: cannot read file \(path)"])
        }
    }
}

import Foundation
