import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import SluiceCore
import SluiceStore

/// Stage 4b of the request path, the shared response cache (SPEC §9), for one policy snapshot:
/// looks a GET up in the store, answers it from a fresh (or stale-while-revalidate) entry,
/// and otherwise lets exactly one request per key fill it — within the instance by waiting on
/// the first (`CacheFills`), across instances by the store's fill lock with a timeout, after
/// which each goes alone.
struct ResponseCaching: Sendable {
    let store: any SharedStore
    let fills: CacheFills
    let clock: EpochClock
    let metrics: GatewayMetrics
    let logger: Logger
    /// How long requests wait for another instance's fill before each goes alone.
    static let fillLockTimeout: Duration = .seconds(10)
    /// How often a request waiting on another instance's fill looks for the entry.
    static let fillPollInterval: Duration = .milliseconds(20)

    /// What the lookup decided.
    enum Decision {
        /// Answer from the cache; `refresh`: also refresh the entry in the background (once).
        case answer(PartnerRequestStateMachine.CachedAnswer, refresh: Bool)
        /// Call the upstream (filling the entry when `exchange.fills`).
        case forward
    }

    /// The exchange of a GET or HEAD on a route with `cache:`.
    func exchange(_ head: PartnerRequestHead, plan: ForwardPlan, cache: RouteCache) -> CacheExchange {
        let directives = ["cache-control", "pragma"].flatMap { name in head.headers[name].map { (name: name, value: $0) } }
        let vary = cache.vary.map { name in (name: name, value: Self.joined(head.headers[name])) }
        let owner = cache.scope == .shared ? CacheEntryKey.sharedOwner : plan.partner.id
        let hash = CacheKey.make(
            route: plan.route.cacheKeyRoute ?? plan.route.id, partner: cache.scope == .shared ? nil : plan.partner.id, pathAndQuery: head.target, vary: vary
        )
        return CacheExchange(
            key: CacheEntryKey(route: plan.route.id, owner: owner, hash: hash), cache: cache, mode: CachePolicy.requestMode(directives),
            requestHeaders: head.headers, fillable: head.method == .GET, caching: self
        )
    }

    /// Looks the exchange's key up and decides; `decided` runs once, on `eventLoop`. A GET
    /// that finds no entry takes the key's fill lock in the same store step.
    func lookUp(_ exchange: CacheExchange, on eventLoop: any EventLoop, decided: @escaping (Decision) -> Void) {
        exchange.eventLoop = eventLoop
        let lockFor = exchange.mode != .bypass && exchange.fillable ? Self.fillLockTimeout : nil
        store.lookUpResponse(exchange.key, lockFor: lockFor, on: eventLoop) { result in
            let lookup: CacheLookup
            switch result {
            case .success(let found): lookup = found
            case .failure(let error):
                logger.warning("cache lookup failed; the request goes to the upstream", metadata: ["error": .string("\(error)")])
                return decided(.forward)
            }
            guard let found = lookup.entry else { return fill(exchange, locked: lookup.locked, on: eventLoop, decided: decided) }
            guard exchange.matchesVary(found) else {
                if lookUpVariant(exchange, of: found, on: eventLoop, decided: decided) { return }
                return fill(exchange, locked: nil, on: eventLoop, decided: decided)
            }
            let age = found.age(at: clock())
            switch CachePolicy.use(found.freshness, age: age, request: exchange.mode) {
            case .fresh(let ttl):
                exchange.result = .hit
                decided(.answer(exchange.answer(found, age: age, status: CacheStatus.hit(ttl: ttl)), refresh: false))
            case .staleWhileRevalidate:
                exchange.result = .stale
                // One refresh per key at a time: the refresh holds the key's fill until it ends.
                let refresh = fills.lead(exchange.key)
                let status = CacheStatus.hit(ttl: found.freshness.lifetime - age, detail: "stale-while-revalidate")
                decided(.answer(exchange.answer(found, age: age, status: status), refresh: refresh))
            case .revalidate(let allowedOnError):
                exchange.stale = found
                exchange.staleAllowedOnError = allowedOnError
                fill(exchange, locked: nil, on: eventLoop, decided: decided)
            }
        }
    }

    /// No usable entry. `locked`: whether the lookup took the store's fill lock (nil: it did not
    /// try). With the lock, this request fills the key; else it waits for this instance's fill
    /// of the key, or for the lock holder's entry in the store, or (no lock tried) asks for it.
    private func fill(_ exchange: CacheExchange, locked: Bool?, on eventLoop: any EventLoop, decided: @escaping (Decision) -> Void) {
        // A HEAD's answer has no body to keep: it is answered from a GET's entry, never fills one.
        guard exchange.mode != .bypass, exchange.fillable else { return decided(.forward) }
        if locked == true {
            exchange.holdsStoreLock = true
            exchange.fills = fills.lead(exchange.key)
            return decided(.forward)
        }
        guard let waiting = fills.begin(exchange.key, on: eventLoop) else {
            exchange.fills = true
            guard locked == nil else { return waitForEntry(exchange, until: .now() + TimeAmount(Self.fillLockTimeout), on: eventLoop, decided: decided) }
            return takeStoreLock(exchange, on: eventLoop, decided: decided)
        }
        waiting.assumeIsolated().whenComplete { result in
            guard case .success(let entry?) = result else { return decided(.forward) }
            guard exchange.matchesVary(entry) else {
                if lookUpVariant(exchange, of: entry, on: eventLoop, decided: decided) { return }
                return decided(.forward)
            }
            exchange.result = .coalesced
            decided(.answer(exchange.hit(entry, at: clock()), refresh: false))
        }
    }

    /// Across instances: the store's fill lock; without it, wait for the holder's entry.
    private func takeStoreLock(_ exchange: CacheExchange, on eventLoop: any EventLoop, decided: @escaping (Decision) -> Void) {
        store.takeFillLock(exchange.key, for: Self.fillLockTimeout, on: eventLoop) { result in
            guard case .success(false) = result else {
                exchange.holdsStoreLock = (try? result.get()) == true
                return decided(.forward)
            }
            waitForEntry(exchange, until: .now() + TimeAmount(Self.fillLockTimeout), on: eventLoop, decided: decided)
        }
    }

    private func waitForEntry(_ exchange: CacheExchange, until deadline: NIODeadline, on eventLoop: any EventLoop, decided: @escaping (Decision) -> Void) {
        eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(Self.fillPollInterval)) {
            store.cachedResponse(exchange.key, on: eventLoop) { result in
                if case .success(let entry?) = result, exchange.stale.map({ entry.storedAt > $0.storedAt }) ?? true {
                    guard exchange.matchesVary(entry) else {
                        if lookUpVariant(exchange, of: entry, on: eventLoop, decided: decided) { return }
                        return decided(.forward)
                    }
                    exchange.result = .coalesced
                    let answer = exchange.hit(entry, at: clock())
                    exchange.finishFill(entry)
                    return decided(.answer(answer, refresh: false))
                }
                guard NIODeadline.now() < deadline else { return decided(.forward) }
                waitForEntry(exchange, until: deadline, on: eventLoop, decided: decided)
            }
        }
    }

    /// `entry`, at the exchange's plain key, answered another variant of the upstream's `Vary`:
    /// the exchange moves to its own variant's key and looks that up (once per request; a fill
    /// of the plain key it led ends with `entry`). False when there is no variant to look up.
    private func lookUpVariant(_ exchange: CacheExchange, of entry: CachedResponse, on eventLoop: any EventLoop, decided: @escaping (Decision) -> Void) -> Bool {
        guard !exchange.atVariantKey, !entry.varyNames.isEmpty else { return false }
        exchange.finishFill(entry)
        exchange.moveToVariant(names: entry.varyNames)
        lookUp(exchange, on: eventLoop, decided: decided)
        return true
    }

    /// Refreshes a stale entry in the background (stale-while-revalidate): `request` (a GET
    /// with the forwarded headers) goes to `upstream` like a task's call; a storable answer
    /// replaces the entry. The key's fill (taken by the lookup) ends with it.
    func refresh(_ exchange: CacheExchange, request: TaskRequest, partner: String, upstream: UpstreamRuntime, on eventLoop: any EventLoop) {
        let call = TaskExchange.start(request, partner: partner, upstream: upstream, traceparent: nil, on: eventLoop, logger: logger)
        let (key, cache, requestHeaders) = (exchange.key, exchange.cache, exchange.requestHeaders)
        Task {
            guard case .response(let answer) = await call.outcome else { return fills.finish(key, with: nil) }
            let now = clock()
            let pairs = answer.headers.map { (name: $0.name, value: $0.value) }
            guard case .success(let freshness) = CachePolicy.storability(status: answer.status, headers: pairs, bodyLength: answer.body.count, route: cache, now: now),
                let names = CachePolicy.varyNames(pairs)
            else { return fills.finish(key, with: nil) }
            let entry = CachedResponse.arriving(
                status: answer.status, headers: answer.headers, body: answer.body, at: now, freshness: freshness, varyNames: names,
                varyValues: names.map { CacheExchange.varyValue($0, in: requestHeaders) }
            )
            try? await store.storeResponse(entry, at: key, on: eventLoop)
            fills.finish(key, with: entry)
        }
    }

    static func joined(_ values: [String]) -> String? {
        values.isEmpty ? nil : values.joined(separator: ", ")
    }
}

/// The fills running in this instance, by key: the first request of a key fills it, the others
/// wait for its entry (or for nil: each then goes alone). Touched only on misses.
final class CacheFills: Sendable {
    private let waiting = NIOLockedValueBox<[CacheEntryKey: [EventLoopPromise<CachedResponse?>]]>([:])

    /// How many keys are being filled now.
    var keysFilling: Int { waiting.withLockedValue { $0.count } }

    /// Whether the caller now fills `key` (and must call `finish`): false when a fill runs.
    func lead(_ key: CacheEntryKey) -> Bool {
        waiting.withLockedValue { waiting in
            guard waiting[key] == nil else { return false }
            waiting[key] = []
            return true
        }
    }

    /// nil: the caller fills the key (and must call `finish`); else what it waits for.
    func begin(_ key: CacheEntryKey, on eventLoop: any EventLoop) -> EventLoopFuture<CachedResponse?>? {
        waiting.withLockedValue { waiting in
            guard waiting[key] != nil else {
                waiting[key] = []
                return nil
            }
            let promise = eventLoop.makePromise(of: CachedResponse?.self)
            waiting[key]?.append(promise)
            return promise.futureResult
        }
    }

    /// The fill of `key` ended with `entry` (nil: nothing usable; each waiter goes alone).
    func finish(_ key: CacheEntryKey, with entry: CachedResponse?) {
        let promises = waiting.withLockedValue { $0.removeValue(forKey: key) } ?? []
        for promise in promises { promise.succeed(entry) }
    }
}

/// One cached route's request: its key, what the lookup found and, while it fills the entry,
/// the upstream answer as it streams. Lives on the request's event loop.
final class CacheExchange {
    enum Result: String {
        case hit, miss, stale, revalidated, coalesced, bypass
    }

    /// The request's plain key, or its variant's once the plain key's entry named the
    /// upstream's `Vary` headers and the request's values differ (`moveToVariant`).
    private(set) var key: CacheEntryKey
    private(set) var atVariantKey = false
    let cache: RouteCache
    let mode: CachePolicy.RequestMode
    let requestHeaders: HTTPHeaders
    /// A GET (a HEAD is answered from entries, never fills them).
    let fillable: Bool
    private let caching: ResponseCaching
    var result: Result
    /// A stale entry the upstream call revalidates (and answers with on error when allowed).
    var stale: CachedResponse?
    var staleAllowedOnError = false
    /// This request fills the key in this instance (others wait on it).
    var fills = false
    var holdsStoreLock = false
    /// The request's loop: the entry is stored over its connection, so that a later lookup on
    /// the same loop comes after the store.
    var eventLoop: (any EventLoop)?
    private var capture: (status: Int, headers: [TaskHeader], freshness: CachePolicy.Freshness, varyNames: [String], body: [UInt8])?
    private var ended = false

    init(
        key: CacheEntryKey, cache: RouteCache, mode: CachePolicy.RequestMode, requestHeaders: HTTPHeaders, fillable: Bool,
        caching: ResponseCaching
    ) {
        self.key = key
        self.fillable = fillable
        self.cache = cache
        self.mode = mode
        self.requestHeaders = requestHeaders
        self.caching = caching
        result = mode == .bypass ? .bypass : .miss
    }

    /// Whether `entry` answers this request: the request's values of the upstream's `Vary` names
    /// are the storing request's.
    func matchesVary(_ entry: CachedResponse) -> Bool {
        entry.varyNames.enumerated().allSatisfy { index, name in varyValue(name) == entry.varyValues[index] }
    }

    /// Moves the exchange to the key of its variant of `names` (the upstream's `Vary`).
    func moveToVariant(names: [String]) {
        key = CacheEntryKey(route: key.route, owner: key.owner, hash: CacheKey.variant(of: key.hash, names: names, values: names.map(varyValue)))
        atVariantKey = true
    }

    private func varyValue(_ name: String) -> String? {
        Self.varyValue(name, in: requestHeaders)
    }

    /// The request's value of header `name` (several lines joined), nil when absent.
    static func varyValue(_ name: String, in headers: HTTPHeaders) -> String? {
        ResponseCaching.joined(headers[name])
    }

    /// The answer from `entry` as a hit at `now` (`Cache-Status: sluice; hit; ttl=…`, negative
    /// when stale, with `detail`).
    func hit(_ entry: CachedResponse, at now: Int64, detail: String? = nil) -> PartnerRequestStateMachine.CachedAnswer {
        let age = entry.age(at: now)
        return answer(entry, age: age, status: CacheStatus.hit(ttl: entry.freshness.lifetime - age, detail: detail))
    }

    /// The answer from `entry`: 304 when the partner's own conditional request matches it.
    func answer(_ entry: CachedResponse, age: Int64, status cacheStatus: String) -> PartnerRequestStateMachine.CachedAnswer {
        let conditions = ["if-none-match", "if-modified-since"].flatMap { name in requestHeaders[name].map { (name: name, value: $0) } }
        let notModified = entry.status == 200 && !conditions.isEmpty
            && CachePolicy.notModified(request: conditions, etag: entry.header("etag"), lastModified: entry.header("last-modified"))
        return PartnerRequestStateMachine.CachedAnswer(response: entry, notModified: notModified, age: max(0, age) / 1_000, cacheStatus: cacheStatus)
    }

    /// The validators to send upstream when revalidating a stale entry.
    var validators: [(String, String)] {
        guard let stale else { return [] }
        return [("If-None-Match", stale.header("etag")), ("If-Modified-Since", stale.header("last-modified"))].compactMap { name, value in value.map { (name, $0) } }
    }

    /// The upstream answered. Returns an answer to give instead (a 304 that revalidated the
    /// stale entry; a 5xx while the stale entry may answer on error), or nil and the
    /// `Cache-Status` to add to the forwarded answer (the capture starts when it may be stored).
    func upstreamResponded(status: Int, headers: HTTPHeaders) -> (instead: PartnerRequestStateMachine.CachedAnswer?, cacheStatus: String) {
        let now = caching.clock()
        if status == 304, var entry = stale {
            let fresh = refreshed(&entry, with: headers, now: now)
            result = .revalidated
            caching.store.storeResponse(entry, at: key, releasingLock: holdsStoreLock, on: eventLoop ?? caching.store.defaultEventLoop) { _ in }
            holdsStoreLock = false
            finishFill(entry)
            return (answer(entry, age: entry.initialAge, status: CacheStatus.forwarded(.stale, status: 304, stored: fresh)), "")
        }
        if status >= 500, let entry = stale, staleAllowedOnError {
            finishFill(nil)
            result = .stale
            return (hit(entry, at: now, detail: "stale-if-error"), "")
        }
        let reason: CacheStatus.Forward = mode == .bypass ? .bypass : stale != nil ? .stale : mode == .revalidate ? .request : .miss
        guard fills || holdsStoreLock || mode == .revalidate, mode != .bypass, fillable else {
            return (nil, CacheStatus.forwarded(reason, status: status, stored: false))
        }
        var kept: [TaskHeader] = []
        let connection = headers["connection"]
        let nominated = connection.isEmpty ? [] : HeaderRewriter.connectionNominated(values: connection)
        for (name, value) in headers where HeaderRewriter.keepsResponseHeader(name, nominated: nominated) { kept.append(TaskHeader(name, value)) }
        let pairs = kept.map { (name: $0.name, value: $0.value) }
        let length = headers.first(name: "content-length").flatMap { Int($0) }
        switch CachePolicy.storability(status: status, headers: pairs, bodyLength: length, route: cache, now: now) {
        case .success(let freshness):
            capture = (status, kept, freshness, CachePolicy.varyNames(pairs) ?? [], [])
            return (nil, CacheStatus.forwarded(reason, status: status, stored: true))
        case .failure(let notStored):
            finishFill(nil)
            return (nil, CacheStatus.forwarded(reason, status: status, stored: false, detail: notStored.rawValue))
        }
    }

    /// Refreshes a revalidated entry from the 304's headers; whether it is fresh again.
    private func refreshed(_ entry: inout CachedResponse, with headers: HTTPHeaders, now: Int64) -> Bool {
        var merged = entry.headers.filter { header in !headers.contains(name: header.name) }
        for (name, value) in headers where HeaderRewriter.keepsResponseHeader(name, nominated: []) && name.lowercased() != "content-length" {
            merged.append(TaskHeader(name, value))
        }
        let pairs = merged.map { (name: $0.name, value: $0.value) }
        guard case .success(let freshness) = CachePolicy.storability(status: entry.status, headers: pairs, bodyLength: entry.body.count, route: cache, now: now)
        else { return false }
        entry.headers = merged
        entry.freshness = freshness
        entry.storedAt = now
        entry.initialAge = headers.first(name: "age").flatMap { Int64($0) }.map { $0 * 1_000 } ?? 0
        return true
    }

    func bodyArrived(_ chunk: ByteBuffer) {
        guard capture != nil else { return }
        guard capture!.body.count + chunk.readableBytes <= cache.maxBody else {
            capture = nil
            return finishFill(nil)
        }
        capture!.body += chunk.readableBytesView
    }

    /// The upstream's answer ended whole: it is stored, and the requests waiting on it get it.
    func responseEnded() {
        guard let capture else { return finishFill(nil) }
        self.capture = nil
        let now = caching.clock()
        let entry = CachedResponse.arriving(
            status: capture.status, headers: capture.headers, body: Data(capture.body), at: now, freshness: capture.freshness,
            varyNames: capture.varyNames, varyValues: capture.varyNames.map(varyValue)
        )
        let store = caching.store
        let key = key
        store.storeResponse(entry, at: key, releasingLock: holdsStoreLock, on: eventLoop ?? store.defaultEventLoop) { _ in }
        holdsStoreLock = false
        finishFill(entry)
    }

    /// Ends this request's fill (requests waiting on it get `entry`, or go alone on nil).
    func finishFill(_ entry: CachedResponse?) {
        if fills {
            fills = false
            caching.fills.finish(key, with: entry)
        }
        if holdsStoreLock, entry == nil {
            holdsStoreLock = false
            caching.store.releaseFillLock(key, on: eventLoop ?? caching.store.defaultEventLoop)
        }
    }

    /// The request is over (however it ended): a fill it still held ends without an entry, and
    /// the result is counted once.
    func end(on eventLoop: any EventLoop) {
        guard !ended else { return }
        ended = true
        capture = nil
        finishFill(nil)
        caching.metrics.cacheResult(route: key.route, result: result.rawValue, on: eventLoop)
    }

    /// On an upstream failure (connect error, timeout, open breaker): the stale entry when it may
    /// answer on error.
    func answerOnFailure() -> PartnerRequestStateMachine.CachedAnswer? {
        finishFill(nil)
        guard let entry = stale, staleAllowedOnError else { return nil }
        result = .stale
        return hit(entry, at: caching.clock(), detail: "stale-if-error")
    }
}
