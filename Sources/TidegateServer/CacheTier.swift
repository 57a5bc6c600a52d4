import Cache
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SQLAnalysis
import Topology

/// What one execution of a cacheable statement is looked up by.
struct CachePlan {
    var key: CacheKey
    var database: String
    var fingerprint: String
    /// The tags its result depends on (the generation first), in `CacheTags.readTags` order.
    var tags: [String]
    var ttlMs: Int
    /// Accept an entry filled less than this long ago even if its versions moved (hint or role setting).
    var maxStalenessMs: Int?
}

/// The answer of a lookup.
enum CacheLookup {
    /// The reply bytes to replay.
    case hit(ByteBuffer)
    /// Run the query; `ticket` says how to store its reply (nil: do not store it).
    case miss(FillTicket?)
    /// The cache cannot answer now (Redis unreachable, listener behind, lost invalidations): run the query.
    case bypass(String)
}

/// What a miss needs to store its reply: the versions read before the query was sent.
struct FillTicket {
    var plan: CachePlan
    var generation: String
    var versions: [Int64]
    /// The highest version read: a replica's reply is kept only if it had replayed past this.
    var maxVersion: UInt64
    /// This execution holds the fill lock (single flight): release it when done.
    var holdsLock: Bool
}

/// The cache tier of one Tidegate process: the L1, Redis, single flight, invalidation, statistics. Shared by
/// every event loop.
// @unchecked Sendable: the mutable state is in `state` behind a lock; the rest is immutable.
final class CacheTier: @unchecked Sendable {
    let settings: TidegateConfig.CacheSettings
    let tags: CacheTags
    let l1: L1Store
    let redis: RedisClient
    let logger: Logger
    /// This instance's name in fill locks.
    let instanceID = String(UInt64.random(in: 1...UInt64.max), radix: 36)

    struct FingerprintStats {
        var hits = 0
        var misses = 0
    }

    struct State {
        var hits = 0
        var misses = 0
        var bypasses: [String: Int] = [:]
        var fills = 0
        var fillsRefused: [String: Int] = [:]
        var invalidations = 0
        var tagUpdates = 0
        var invalidationFailures = 0
        var singleFlightWaits = 0
        var fingerprints: [String: FingerprintStats] = [:]
        /// An invalidation could not reach Redis: until the generation is replaced, no hit is served.
        var generationOwed = false
        var generationReplacements = 0
        /// Local single flight: digest → sessions waiting for the reply of the execution that fills it.
        var flights: [String: (started: Int64, waiters: [(id: Int, promise: EventLoopPromise<ByteBuffer?>)])] = [:]
        var nextWaiter = 0
        /// Databases that had lookups (CACHE FLUSH of a relation moves its epoch in each).
        var databases: Set<String> = []
        /// Per database: the listener's lag, and whether it is within bounds.
        var listenerLagMs: [String: Int64] = [:]
    }

    private let state = NIOLockedValueBox(State())
    static let fingerprintLimit = 10_000

    init(settings: TidegateConfig.CacheSettings, relations: [TidegateConfig.Relation], redis: RedisClient, logger: Logger) {
        self.settings = settings
        var buckets: [String: RelationBuckets] = [:]
        for relation in relations where relation.cache {
            buckets[relation.name] = RelationBuckets(
                levels: BucketLevels(baseMicros: Int64(relation.bucketMs) * 1_000), lateWindowMicros: Int64(relation.lateWindowMs) * 1_000)
        }
        self.tags = CacheTags(prefix: settings.keyPrefix, relations: buckets, maxTags: settings.maxTags)
        self.l1 = L1Store(budget: settings.l1Bytes)
        self.redis = redis
        self.logger = logger
    }

    /// Wall-clock milliseconds: entries are shared between instances, so their times are wall times.
    static func nowMillis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000) }

    func entryKey(_ digest: String) -> String { self.settings.keyPrefix + "e:" + digest }
    func lockKey(_ digest: String) -> String { self.settings.keyPrefix + "l:" + digest }

    // MARK: Lookup

    /// Why hits cannot be served now, if they cannot.
    func bypassReason(database: String) -> String? {
        guard self.redis.isAvailable else { return "redis unavailable" }
        return self.state.withLockedValue { state -> String? in
            if state.generationOwed { return "invalidations lost: waiting to replace the generation" }
            if self.settings.listener.enabled {
                guard self.settings.listener.databases.contains(database) else { return "no replication listener for this database" }
                guard let lag = state.listenerLagMs[database] else { return "replication listener not running" }
                if lag > Int64(self.settings.listener.maxLagMs) { return "replication listener behind" }
            }
            return nil
        }
    }

    func countBypass(_ reason: String, fingerprint: String) {
        self.state.withLockedValue { state in
            state.bypasses[reason, default: 0] += 1
            Self.countFingerprint(&state, fingerprint, hit: false)
        }
    }

    private static func countFingerprint(_ state: inout State, _ fingerprint: String, hit: Bool) {
        if state.fingerprints[fingerprint] == nil && state.fingerprints.count >= Self.fingerprintLimit { return }
        if hit { state.fingerprints[fingerprint, default: FingerprintStats()].hits += 1 } else {
            state.fingerprints[fingerprint, default: FingerprintStats()].misses += 1
        }
    }

    func lookup(_ plan: CachePlan, on loop: any EventLoop) -> EventLoopFuture<CacheLookup> {
        self.state.withLockedValue { _ = $0.databases.insert(plan.database) }
        if let reason = self.bypassReason(database: plan.database) {
            self.countBypass(reason, fingerprint: plan.fingerprint)
            return loop.makeSucceededFuture(.bypass(reason))
        }
        let now = Self.nowMillis()
        let local = self.l1.get(plan.key.digest, nowMillis: now)
        var commands = [RedisCommand("MGET", arguments: plan.tags)]
        if local == nil { commands.append(RedisCommand("GET", self.entryKey(plan.key.digest))) }
        return self.redis.pipeline(commands, on: loop).flatMap { replies -> EventLoopFuture<CacheLookup> in
            guard case .array(let values?) = replies.first, values.count == plan.tags.count else {
                self.countBypass("redis error", fingerprint: plan.fingerprint)
                return loop.makeSucceededFuture(.bypass("redis error"))
            }
            let generation = values[0].string
            let versions = values.dropFirst().map { value -> Int64 in value.string.flatMap { Int64($0) } ?? 0 }
            var entry = local
            if entry == nil, replies.count > 1, let bytes = replies[1].bytes {
                entry = CacheEntry.decode(bytes)
                if let entry, entry.expiresAtMillis > now { self.l1.put(plan.key.digest, entry) }
            }
            if let entry, let generation, entry.material == plan.key.material, entry.generation == generation,
                entry.expiresAtMillis > now,
                entry.versions == versions || plan.maxStalenessMs.map({ now - entry.filledAtMillis < Int64($0) }) == true
            {
                self.state.withLockedValue { state in
                    state.hits += 1
                    Self.countFingerprint(&state, plan.fingerprint, hit: true)
                }
                return loop.makeSucceededFuture(.hit(entry.reply))
            }
            self.state.withLockedValue { state in
                state.misses += 1
                Self.countFingerprint(&state, plan.fingerprint, hit: false)
            }
            guard let generation else {
                // A Redis without a generation (new or restarted): make one; this miss is not stored.
                return self.redis.pipeline(
                    [RedisCommand("SET", self.tags.generationKey, Self.newGeneration(), "NX")], on: loop
                ).map { _ in .miss(nil) }.recover { _ in .miss(nil) }
            }
            let maxVersion = versions.max().map { UInt64(max(0, $0)) } ?? 0
            let ticket = FillTicket(plan: plan, generation: generation, versions: versions, maxVersion: maxVersion, holdsLock: false)
            return self.singleFlight(ticket, on: loop)
        }.recover { error in
            self.countBypass("redis unavailable", fingerprint: plan.fingerprint)
            return .bypass("redis unavailable")
        }
    }

    static func newGeneration() -> String { String(UInt64.random(in: 1...UInt64.max), radix: 36) }

    /// Concurrent misses on one key send one query: within this process the first execution fills and the
    /// others wait for its reply; across instances the first to take the Redis lock fills and the others
    /// poll for its entry. A waiter whose wait ends without a reply runs the query itself.
    private func singleFlight(_ ticket: FillTicket, on loop: any EventLoop) -> EventLoopFuture<CacheLookup> {
        let digest = ticket.plan.key.digest
        let now = Self.nowMillis()
        let promise = loop.makePromise(of: ByteBuffer?.self)
        let waiter = self.state.withLockedValue { state -> Int? in
            // A flight older than the fill lock was abandoned (its session went away): take it over.
            if let flight = state.flights[digest], now - flight.started < Int64(self.settings.fillLockMs) {
                state.nextWaiter += 1
                state.flights[digest]!.waiters.append((state.nextWaiter, promise))
                state.singleFlightWaits += 1
                return state.nextWaiter
            }
            state.flights[digest] = (now, state.flights[digest]?.waiters ?? [])
            return nil
        }
        if let waiter {
            // Whichever comes first, the fill or the timeout, takes the waiter out and completes it once.
            let timeout = loop.scheduleTask(in: .milliseconds(Int64(self.settings.fillLockMs))) {
                let removed = self.state.withLockedValue { state -> Bool in
                    guard let index = state.flights[digest]?.waiters.firstIndex(where: { $0.id == waiter }) else { return false }
                    state.flights[digest]!.waiters.remove(at: index)
                    return true
                }
                if removed { promise.succeed(nil) }
            }
            return promise.futureResult.map { reply -> CacheLookup in
                timeout.cancel()
                if let reply { return .hit(reply) }
                return .miss(nil)
            }
        }
        promise.succeed(nil)
        // A fill that completed while this lookup was out: its entry is in the L1 now.
        if let entry = self.l1.get(digest, nowMillis: now), entry.material == ticket.plan.key.material,
            entry.generation == ticket.generation, entry.versions == ticket.versions
        {
            let waiters = self.state.withLockedValue { state in
                state.singleFlightWaits += 1
                return state.flights.removeValue(forKey: digest)?.waiters ?? []
            }
            for waiter in waiters { waiter.promise.succeed(entry.reply) }
            return loop.makeSucceededFuture(.hit(entry.reply))
        }
        let lock = RedisCommand(
            "SET", self.lockKey(digest), self.instanceID, "NX", "PX", String(self.settings.fillLockMs))
        return self.redis.pipeline([lock], on: loop).flatMap { replies -> EventLoopFuture<CacheLookup> in
            var ticket = ticket
            if replies.first?.isNull == false {
                ticket.holdsLock = true
                return loop.makeSucceededFuture(.miss(ticket))
            }
            // Another instance fills: wait for its entry (a few polls), then run the query ourselves.
            return self.pollForEntry(ticket, on: loop, attempt: 0)
        }.recover { _ in .miss(ticket) }
    }

    private func pollForEntry(_ ticket: FillTicket, on loop: any EventLoop, attempt: Int) -> EventLoopFuture<CacheLookup> {
        let delay = min(2 << attempt, 50)
        let elapsed = (0..<attempt).reduce(0) { $0 + min(2 << $1, 50) }
        guard elapsed + delay <= self.settings.fillLockMs else { return loop.makeSucceededFuture(.miss(ticket)) }
        return loop.scheduleTask(in: .milliseconds(Int64(delay))) {}.futureResult.flatMap {
            self.redis.pipeline([RedisCommand("GET", self.entryKey(ticket.plan.key.digest))], on: loop)
        }.flatMap { replies -> EventLoopFuture<CacheLookup> in
            if let bytes = replies.first?.bytes, let entry = CacheEntry.decode(bytes), entry.material == ticket.plan.key.material,
                entry.generation == ticket.generation, entry.versions == ticket.versions
            {
                self.l1.put(ticket.plan.key.digest, entry)
                return loop.makeSucceededFuture(.hit(entry.reply))
            }
            return self.pollForEntry(ticket, on: loop, attempt: attempt + 1)
        }.recover { _ in .miss(ticket) }
    }

    // MARK: Fill

    /// The reply of a miss arrived (nil: not cacheable, e.g. an error or too large). Stores it and hands it
    /// to the executions waiting on the same key.
    func complete(_ ticket: FillTicket, reply: ByteBuffer?, refusal: String?, on loop: any EventLoop) {
        let digest = ticket.plan.key.digest
        let waiters = self.state.withLockedValue { state -> [(id: Int, promise: EventLoopPromise<ByteBuffer?>)] in
            if let refusal { state.fillsRefused[refusal, default: 0] += 1 } else if reply != nil { state.fills += 1 }
            return state.flights.removeValue(forKey: digest)?.waiters ?? []
        }
        for waiter in waiters { waiter.promise.succeed(refusal == nil ? reply : nil) }
        var commands: [RedisCommand] = []
        if let reply, refusal == nil {
            let now = Self.nowMillis()
            let entry = CacheEntry(
                material: ticket.plan.key.material, generation: ticket.generation, versions: ticket.versions, filledAtMillis: now,
                expiresAtMillis: now + Int64(ticket.plan.ttlMs), reply: reply)
            self.l1.put(digest, entry)
            commands.append(
                RedisCommand(arguments: [ByteBuffer(string: "SET"), ByteBuffer(string: self.entryKey(digest)), entry.encoded(),
                    ByteBuffer(string: "PX"), ByteBuffer(string: String(ticket.plan.ttlMs))]))
        }
        if ticket.holdsLock { commands.append(RedisCommand("DEL", self.lockKey(digest))) }
        if !commands.isEmpty {
            self.redis.pipeline(commands, on: loop).whenFailure { error in
                self.logger.debug("cache fill not stored", metadata: ["error": "\(error)"])
            }
        }
    }

    // MARK: Invalidation

    /// Raises every tag to a version above both its current one and `lsn` (a write's commit position).
    /// Tags outlive the longest entry, so an entry can never see a tag it read expire and come back at
    /// its old version.
    static let bumpScript = """
        local v = tonumber(ARGV[1])
        for _, k in ipairs(KEYS) do
          local c = tonumber(redis.call('GET', k) or '0') or 0
          local n = math.max(c + 1, v)
          redis.call('SET', k, string.format('%.0f', n), 'PX', ARGV[2])
        end
        return #KEYS
        """

    var tagTTLMs: Int { 2 * max(self.settings.sealedTTLMs, self.settings.liveTTLMs, self.settings.queries.values.compactMap(\.ttlMs).max() ?? 0) + 60_000 }

    /// Moves `tags` past `lsn`. On failure the generation is owed: no hit is served until it is replaced.
    func invalidate(_ tags: Set<String>, lsn: LSN?, on loop: any EventLoop) -> EventLoopFuture<Void> {
        guard !tags.isEmpty else { return loop.makeSucceededVoidFuture() }
        let sorted = tags.sorted()
        var commands: [RedisCommand] = []
        // Keep each script call small enough not to stall Redis.
        for chunk in stride(from: 0, to: sorted.count, by: 512) {
            let keys = sorted[chunk..<min(chunk + 512, sorted.count)]
            commands.append(
                RedisCommand(
                    "EVAL", arguments: [Self.bumpScript, String(keys.count)] + Array(keys) + [String(lsn?.value ?? 0), String(self.tagTTLMs)]))
        }
        return self.redis.pipeline(commands, on: loop).flatMapThrowing { replies in
            if let error = replies.first(where: { $0.errorMessage != nil })?.errorMessage { throw CacheTierError(message: error) }
            self.state.withLockedValue { state in
                state.invalidations += 1
                state.tagUpdates += sorted.count
            }
        }.flatMapError { error in
            self.logger.warning("cache invalidation did not reach Redis; no hits until the generation is replaced", metadata: ["error": "\(error)"])
            self.state.withLockedValue { state in
                state.invalidationFailures += 1
                state.generationOwed = true
            }
            return loop.makeSucceededVoidFuture()
        }
    }

    /// The writes of one transaction seen by the replication listener (or committed by the batcher): the
    /// exact (instrument, bucket) tags of its rows, the epochs of relations whose rows are unknown.
    func apply(_ commit: ReplicationCommit, database: String, on loop: any EventLoop) -> EventLoopFuture<Void> {
        var tags = Set<String>()
        for row in commit.rows {
            self.tags.writeTags(database: database, relation: row.relation, instant: row.instant, instrument: row.instrument, into: &tags)
        }
        for relation in commit.wholeRelations where self.tags.relations[relation] != nil {
            tags.insert(self.tags.epochKey(database: database, relation: relation))
        }
        return self.invalidate(tags, lsn: commit.endLSN, on: loop)
    }

    /// Invalidates everything at once (CACHE FLUSH, a listener that restarted, lost invalidations).
    func replaceGeneration(on loop: any EventLoop) -> EventLoopFuture<Void> {
        self.l1.removeAll()
        return self.redis.pipeline([RedisCommand("SET", self.tags.generationKey, Self.newGeneration())], on: loop).flatMapThrowing {
            replies in
            if let error = replies.first?.errorMessage { throw CacheTierError(message: error) }
            self.state.withLockedValue { state in
                state.generationOwed = false
                state.generationReplacements += 1
            }
        }.flatMapErrorThrowing { error in
            self.state.withLockedValue { $0.generationOwed = true }
            throw error
        }
    }

    /// CACHE FLUSH relation: moves the relation's epoch in every database seen.
    func flush(relation: String, lsn: LSN?, on loop: any EventLoop) -> EventLoopFuture<Void> {
        let databases = self.state.withLockedValue { $0.databases.union(self.settings.listener.databases) }
        let tags = Set(databases.map { self.tags.epochKey(database: $0, relation: relation) })
        return self.invalidate(tags, lsn: lsn, on: loop)
    }

    /// Periodic: replace an owed generation once Redis answers again.
    func housekeeping(on loop: any EventLoop) {
        let owed = self.state.withLockedValue { $0.generationOwed }
        if owed && self.redis.isAvailable {
            self.replaceGeneration(on: loop).whenSuccess {
                self.logger.notice("cache generation replaced after lost invalidations; hits resume")
            }
        }
    }

    /// The replication listeners' applied positions, by database (set once at start).
    private let listenerPositions = NIOLockedValueBox<[String: @Sendable () -> LSN?]>([:])

    func registerListener(database: String, position: @escaping @Sendable () -> LSN?) {
        self.listenerPositions.withLockedValue { $0[database] = position }
    }

    /// Succeeds with true once the listener of `database` has applied the invalidations of everything up to
    /// `lsn` (it then moved the exact tags of the rows written); false when there is no listener or it does
    /// not get there within `cache.listener.max_lag_ms`.
    func waitForListener(database: String, lsn: LSN, on loop: any EventLoop) -> EventLoopFuture<Bool> {
        guard let position = self.listenerPositions.withLockedValue({ $0[database] }) else {
            return loop.makeSucceededFuture(false)
        }
        let promise = loop.makePromise(of: Bool.self)
        let deadline = NIODeadline.now() + .milliseconds(Int64(self.settings.listener.maxLagMs))
        func check() {
            if let applied = position(), applied >= lsn { return promise.succeed(true) }
            if NIODeadline.now() >= deadline { return promise.succeed(false) }
            loop.scheduleTask(in: .milliseconds(1)) { check() }
        }
        check()
        return promise.futureResult
    }

    func setListenerLag(database: String, lagMs: Int64?) {
        self.state.withLockedValue { state in
            if let lagMs { state.listenerLagMs[database] = lagMs } else { state.listenerLagMs.removeValue(forKey: database) }
        }
    }

    func countRefusal(_ reason: String) {
        self.state.withLockedValue { $0.fillsRefused[reason, default: 0] += 1 }
    }

    // MARK: Statistics

    struct Snapshot {
        var hits: Int
        var misses: Int
        var bypasses: [String: Int]
        var fills: Int
        var fillsRefused: [String: Int]
        var invalidations: Int
        var tagUpdates: Int
        var invalidationFailures: Int
        var singleFlightWaits: Int
        var generationOwed: Bool
        var generationReplacements: Int
        var listenerLagMs: [String: Int64]
        var fingerprints: [String: FingerprintStats]
    }

    var snapshot: Snapshot {
        self.state.withLockedValue { state in
            Snapshot(
                hits: state.hits, misses: state.misses, bypasses: state.bypasses, fills: state.fills, fillsRefused: state.fillsRefused,
                invalidations: state.invalidations, tagUpdates: state.tagUpdates, invalidationFailures: state.invalidationFailures,
                singleFlightWaits: state.singleFlightWaits, generationOwed: state.generationOwed,
                generationReplacements: state.generationReplacements, listenerLagMs: state.listenerLagMs, fingerprints: state.fingerprints)
        }
    }

    /// What was published last, so counters advance by the difference.
    private let published = NIOLockedValueBox<(hits: Int, misses: Int, bypasses: Int, fills: Int, refused: Int, invalidations: Int, tags: Int)>(
        (0, 0, 0, 0, 0, 0, 0))

    /// Publishes the statistics to the metrics (called once a second).
    func publish(to metrics: TidegateMetrics) {
        let snapshot = self.snapshot
        let now = (
            hits: snapshot.hits, misses: snapshot.misses, bypasses: snapshot.bypasses.values.reduce(0, +), fills: snapshot.fills,
            refused: snapshot.fillsRefused.values.reduce(0, +), invalidations: snapshot.invalidations, tags: snapshot.tagUpdates
        )
        let last = self.published.withLockedValue { last in
            defer { last = now }
            return last
        }
        // After RESET STATS the counters start again from zero: count what came since.
        func delta(_ current: Int, _ previous: Int) -> Int64 { Int64(current >= previous ? current - previous : current) }
        metrics.cacheHits.increment(by: delta(now.hits, last.hits))
        metrics.cacheMisses.increment(by: delta(now.misses, last.misses))
        metrics.cacheBypasses.increment(by: delta(now.bypasses, last.bypasses))
        metrics.cacheFills.increment(by: delta(now.fills, last.fills))
        metrics.cacheFillsRefused.increment(by: delta(now.refused, last.refused))
        metrics.cacheInvalidations.increment(by: delta(now.invalidations, last.invalidations))
        metrics.cacheTagUpdates.increment(by: delta(now.tags, last.tags))
        let l1 = self.l1.stats
        metrics.cacheL1Entries.record(l1.entries)
        metrics.cacheL1Bytes.record(l1.bytes)
        metrics.cacheRedisUp.record(self.redis.isAvailable ? 1 : 0)
        metrics.cacheGenerationOwed.record(snapshot.generationOwed ? 1 : 0)
        for database in self.settings.listener.databases {
            metrics.listenerLag(database: database, milliseconds: snapshot.listenerLagMs[database])
        }
    }

    func resetStatistics() {
        self.state.withLockedValue { state in
            state.hits = 0
            state.misses = 0
            state.bypasses = [:]
            state.fills = 0
            state.fillsRefused = [:]
            state.invalidations = 0
            state.tagUpdates = 0
            state.singleFlightWaits = 0
            state.fingerprints = [:]
        }
    }
}

struct CacheTierError: Error, CustomStringConvertible {
    var message: String
    var description: String { self.message }
}
