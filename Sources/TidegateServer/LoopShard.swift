import CoreMetrics
import Logging
import NIOCore
import NIOPosix
import SQLAnalysis
import Topology

/// Everything one event loop owns: its share of every pool, its client sessions, its statistics and its
/// statement memo. Only touched on that loop.
// @unchecked Sendable: confined to one event loop; every access happens on that loop (callbacks of
// futures created on it run there too), so no two threads ever touch it.
final class LoopShard: @unchecked Sendable {
    let loop: any EventLoop
    let runtime: Runtime
    let logger: Logger
    private(set) var pools: [PoolKey: ServerPool] = [:]
    var sessions: [Int: ClientSession] = [:]
    var paused = false
    /// This loop's copy of the configuration, replaced on reload.
    var config: TidegateConfig {
        didSet {
            self.routes = self.config.routes
            if self.config.batchedRelations != oldValue.batchedRelations { self.insertShapeMemo.removeAll() }
            if self.config.cachedRelations != oldValue.cachedRelations {
                self.cacheProfileMemo.removeAll()
                self.cacheWriteMemo.removeAll()
            }
            self.cacheSafeFunctions = Set(self.config.cache.safeFunctions)
            if self.config.rollupSchema != oldValue.rollupSchema {
                self.rollupSchema = self.config.rollupSchema
                self.rewriteMemo.removeAll()
            }
        }
    }
    /// The multi-timeframe rewrite's schema; nil when it is off.
    private(set) var rollupSchema: RollupSchema?
    /// Rewritten texts by the client's text (nil: left unchanged).
    private var rewriteMemo: [ByteBuffer: ByteBuffer?] = [:]
    /// Rewritten statements sent: each simple query and each Bind of a rewritten prepared statement (a Parse
    /// when its Binds are not tracked, as in session pooling).
    var rewrites = 0
    // The cache tier (nil when `cache.enabled` is false), and what it memoizes per text.
    var cacheTier: CacheTier?
    var cacheProfileMemo: [ByteBuffer: CacheProfile] = [:]
    var cacheWriteMemo: [ByteBuffer: CacheWriteProfile] = [:]
    private(set) var cacheSafeFunctions: Set<String> = []
    /// Hits served by this loop (SHOW STATS).
    var cacheHits = 0
    /// Insert coalescing (nil when no relation is batched), and batchable shapes by text.
    lazy var batcher: Batcher? = self.config.batchedRelations.isEmpty ? nil : Batcher(shard: self, logger: self.logger)
    var insertShapeMemo: [ByteBuffer: InsertMemo] = [:]
    lazy var commitProbe = CommitLSNProbe(loop: self.loop, logger: self.logger)
    /// The cache's once-a-second work (on the first loop only).
    var cacheHousekeeping: [RepeatedTask] = []
    /// The replication listeners by database (on the first loop only).
    var cacheListeners: [(String, ReplicationListener)] = []
    /// Whether the configuration has several nodes (read on the hot path, so kept apart).
    private(set) var routes = false
    private var maintenance: RepeatedTask?

    // Statistics (SHOW STATS).
    var queries = 0
    var transactions = 0
    var queryNanos: Int64 = 0
    var bytesIn = 0
    var bytesOut = 0
    var errors = 0

    /// What a simple query does: one effect per statement, and the class of the first. Most queries are
    /// settled by a quick scan of the bytes; the rest go through the lexer.
    func queryAnalysis(_ query: ByteBuffer) -> (effects: [SessionEffect], statementClass: StatementClass) {
        let quick = query.withUnsafeReadableBytes { SessionEffectClassifier.quickFirstWord($0) }
        if let first = quick {
            return (Self.noEffect, StatementClass.of(firstWord: first))
        }
        let statements = SQLLexer.statements(in: String(buffer: query))
        return (
            statements.map { SessionEffectClassifier.classify($0) },
            StatementClass.of(firstWord: statements.first?.leadingWords.first)
        )
    }

    private static let noEffect: [SessionEffect] = [.none]

    /// Memo of statement analysis by text: the server-side name and the session effect.
    private var statementMemo: [StatementMemoKey: StatementInfo] = [:]
    static let statementMemoLimit = 20_000

    init(loop: any EventLoop, runtime: Runtime, logger: Logger) {
        self.loop = loop
        self.runtime = runtime
        self.logger = logger
        self.config = runtime.config
        self.routes = self.config.routes
        self.rollupSchema = self.config.rollupSchema
    }

    /// Whether statements in `database` may be rewritten: the rewrite is on and the database has the
    /// rollup functions of migration 4 (known from its function catalog, which this starts loading when
    /// it is missing; until it has loaded, statements go unchanged).
    func rewriteAllowed(database: String, user: String) -> Bool {
        guard self.rollupSchema != nil else { return false }
        let primary = self.topology.primary ?? (self.routes ? nil : self.config.nodes.first?.name)
        guard case .loaded(let catalog) = self.functionCatalog(database: database, user: user, primary: primary) else { return false }
        return catalog.knows("tidegate_rollup_watermark")
    }

    /// The text to send instead of `query` when it is a time_bucket aggregate the rollups can answer
    /// (RollupRewriter); nil otherwise. Only ASCII texts are rewritten (the client encoding then does not
    /// matter), and only texts that mention time_bucket are parsed at all.
    func rollupRewrite(_ query: ByteBuffer, database: String, user: String) -> ByteBuffer? {
        guard let schema = self.rollupSchema, Self.mentionsTimeBucket(query),
            self.rewriteAllowed(database: database, user: user)
        else { return nil }
        if let memo = self.rewriteMemo[query] { return memo }
        let result = RollupRewriter.rewrite(String(buffer: query), schema: schema).sql.map { ByteBuffer(string: $0) }
        if self.rewriteMemo.count >= Self.statementMemoLimit { self.rewriteMemo.removeAll(keepingCapacity: true) }
        self.rewriteMemo[ByteBuffer(bytes: query.readableBytesView)] = result
        return result
    }

    /// An ASCII text containing "time_bucket" in any case: the only texts the rewrite parses.
    static func mentionsTimeBucket(_ query: ByteBuffer) -> Bool {
        query.withUnsafeReadableBytes { bytes -> Bool in
            let needle: [UInt8] = Array("time_bucket".utf8)
            guard bytes.count >= needle.count else { return false }
            var found = false
            for start in 0...(bytes.count - needle.count) {
                if bytes[start] >= 0x80 { return false }
                if found { continue }
                var index = 0
                while index < needle.count {
                    let byte = bytes[start + index]
                    guard (byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte) == needle[index] else { break }
                    index += 1
                }
                if index == needle.count { found = true }
            }
            return found && bytes[(bytes.count - needle.count)...].allSatisfy { $0 < 0x80 }
        }
    }

    func start() {
        self.cacheTier = self.runtime.cacheTier
        self.cacheSafeFunctions = Set(self.config.cache.safeFunctions)
        self.maintenance = self.loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [weak self] _ in
            guard let self else { return }
            for pool in self.pools.values { pool.maintain() }
            self.publishTraffic()
        }
    }

    // MARK: Topology and routing

    /// The health checker's last view.
    private(set) var topology = TopologyView()
    /// Sessions waiting for a node (a primary during failover), woken by every new view.
    var topologyWaiters: [Int: ClientSession] = [:]
    /// Server connections of each node lent to this loop's clients (least busy first).
    var inFlight: [String: Int] = [:]

    func topologyChanged(_ view: TopologyView) {
        self.topology = view
        for index in self.topology.nodes.indices {
            self.topology.nodes[index].inFlight = self.inFlight[self.topology.nodes[index].name, default: 0]
        }
        guard !self.topologyWaiters.isEmpty else { return }
        let waiters = self.topologyWaiters.values.sorted { $0.id < $1.id }
        for session in waiters { session.topologyChanged() }
    }

    /// A node this loop just failed to reach (connection refused, shutting down): treat it as down until
    /// the health checker's next view says otherwise, so other sessions do not try it meanwhile.
    func markSuspect(_ node: String) {
        guard let index = self.topology.nodes.firstIndex(where: { $0.name == node }),
            self.topology.nodes[index].state != .down
        else { return }
        self.topology.nodes[index].state = .down
        if self.topology.primaries.contains(node) {
            self.topology.primaries.removeAll { $0 == node }
            self.topology.primaryProbe = nil
        }
        self.logger.info("node unreachable; avoided until the next health probe", metadata: ["node": "\(node)"])
    }

    /// The nodes as the router sees them, with this loop's in-flight counts.
    var routingNodes: [NodeSnapshot] { self.topology.nodes }

    /// A server connection of `node` was lent to a client (+1) or given back (-1).
    func adjustInFlight(_ node: String, by delta: Int) {
        self.inFlight[node, default: 0] += delta
        if let index = self.topology.nodes.firstIndex(where: { $0.name == node }) {
            self.topology.nodes[index].inFlight += delta
        }
    }

    private var routedCounters: [String: CoreMetrics.Counter] = [:]

    func countRouted(node: String, reason: String) {
        let key = node + "\u{0}" + reason
        if let counter = self.routedCounters[key] {
            counter.increment()
            return
        }
        let counter = self.runtime.metrics.routed(node: node, reason: reason)
        self.routedCounters[key] = counter
        counter.increment()
    }

    /// Memo of routing profiles (bounded), so a repeated statement is parsed once: by exact text first
    /// (prepared statements, repeated texts), then by the text with its literal values masked (the same
    /// statement with other values).
    private var profileMemo: [ByteBuffer: RouteProfile] = [:]
    private var maskedProfileMemo: [[UInt8]: RouteProfile] = [:]
    static let profileMemoLimit = 20_000

    func routeProfile(_ query: ByteBuffer) -> RouteProfile {
        if let profile = self.profileMemo[query] { return profile }
        let masked = query.withUnsafeReadableBytes { RouteProfile.memoKey($0) }
        let profile: RouteProfile
        if let masked, let known = self.maskedProfileMemo[masked] {
            profile = known
        } else {
            profile = RouteProfile(sql: String(buffer: query))
            if let masked {
                if self.maskedProfileMemo.count >= Self.profileMemoLimit { self.maskedProfileMemo.removeAll(keepingCapacity: true) }
                self.maskedProfileMemo[masked] = profile
            }
        }
        // The exact text too: a repeated text (a prepared statement) is then one hash lookup.
        if self.profileMemo.count >= Self.profileMemoLimit { self.profileMemo.removeAll(keepingCapacity: true) }
        self.profileMemo[ByteBuffer(bytes: query.readableBytesView)] = profile
        return profile
    }

    /// Function volatility per database, loaded from the primary's pg_proc on first use and after RELOAD.
    private var catalogs: [String: FunctionCatalog] = [:]
    /// Databases whose catalog is loading, with when the load started.
    private var catalogsLoading: [String: NIODeadline] = [:]
    /// Sessions wait this long for a catalog; past it, reads calling functions go to the primary until it
    /// has loaded (a slow or stuck primary must not stall them).
    static let catalogWait = TimeAmount.seconds(2)

    private var catalogFailures: [String: NIODeadline] = [:]
    /// Sessions whose first statement calls functions, waiting for their database's catalog.
    private var catalogWaiters: [String: [ClientSession]] = [:]

    enum CatalogState {
        case loaded(FunctionCatalog)
        /// Loading now: a session may wait for it (a few milliseconds).
        case loading
        /// Not available (no primary, or loading failed less than 10 s ago): reads calling functions go
        /// to the primary.
        case unavailable
    }

    /// The catalog of `database`; starts loading it when it is missing.
    func functionCatalog(database: String, user: String, primary: String?) -> CatalogState {
        if let catalog = self.catalogs[database] { return .loaded(catalog) }
        if let started = self.catalogsLoading[database] {
            return NIODeadline.now() - started < Self.catalogWait ? .loading : .unavailable
        }
        if let failed = self.catalogFailures[database], NIODeadline.now() - failed < .seconds(10) { return .unavailable }
        guard let primary else { return .unavailable }
        self.loadCatalog(database: database, user: user, primary: primary)
        return .loading
    }

    func waitForCatalog(_ database: String, session: ClientSession) {
        self.catalogWaiters[database, default: []].append(session)
    }

    static let catalogSQL = """
        SELECT n.nspname, p.proname, p.provolatile FROM pg_catalog.pg_proc p         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        """

    private func loadCatalog(database: String, user: String, primary: String) {
        self.catalogsLoading[database] = .now()
        self.loop.scheduleTask(in: Self.catalogWait) { [weak self] in
            // Still loading: the waiting sessions go on without it.
            guard let self, self.catalogsLoading[database] != nil else { return }
            for session in self.catalogWaiters.removeValue(forKey: database) ?? [] { session.catalogReady() }
        }
        let pool = self.pool(for: PoolKey(database: database, user: user, node: primary))
        let generation = self.catalogGeneration
        pool.checkout().flatMap { server in
            server.runInternalRows(Self.catalogSQL).always { _ in pool.release(server) }
        }.whenComplete { [self] result in
            self.catalogsLoading.removeValue(forKey: database)
            defer {
                for session in self.catalogWaiters.removeValue(forKey: database) ?? [] { session.catalogReady() }
            }
            guard generation == self.catalogGeneration else { return }
            switch result {
            case .success(let rows):
                var catalog = FunctionCatalog(allowList: self.config.routing.safeFunctions)
                for row in rows where row.count == 3 {
                    catalog.add(schema: row[0] ?? "", name: row[1] ?? "", volatility: row[2] ?? "v")
                }
                self.catalogs[database] = catalog
                self.logger.debug("function catalog loaded", metadata: ["database": "\(database)", "functions": "\(rows.count)"])
            case .failure(let error):
                self.catalogFailures[database] = .now()
                self.logger.warning(
                    "could not load function volatility; reads calling functions go to the primary until it loads",
                    metadata: ["database": "\(database)", "error": "\(error)"])
            }
        }
    }

    private var catalogGeneration = 0

    /// After RELOAD: function volatility is read again (the allow-list may have changed too).
    func reloaded() {
        self.catalogGeneration += 1
        self.catalogs.removeAll()
        self.catalogsLoading.removeAll()
        self.catalogFailures.removeAll()
        for session in self.catalogWaiters.values.flatMap({ $0 }) { session.catalogReady() }
        self.catalogWaiters.removeAll()
    }

    /// Closes the idle connections to a drained node (busy ones finish their work first).
    func closeIdleConnections(node: String) {
        for pool in self.pools.values where pool.key.node == node { pool.closeIdle() }
    }

    private var publishedBytesIn = 0
    private var publishedBytesOut = 0

    /// Byte counters go to the metrics once a second, not on every read.
    private func publishTraffic() {
        self.runtime.metrics.bytesIn.increment(by: Int64(self.bytesIn - self.publishedBytesIn))
        self.runtime.metrics.bytesOut.increment(by: Int64(self.bytesOut - self.publishedBytesOut))
        self.publishedBytesIn = self.bytesIn
        self.publishedBytesOut = self.bytesOut
    }

    /// Set on the loop that runs the health checker.
    var healthChecker: HealthChecker?

    func stop() {
        self.maintenance?.cancel()
        self.batcher?.stop()
        self.commitProbe.close()
        for task in self.cacheHousekeeping { task.cancel() }
        self.healthChecker?.stop()
        for pool in self.pools.values { pool.closeAll() }
    }

    func pool(for key: PoolKey) -> ServerPool {
        if let pool = self.pools[key] { return pool }
        let pool = ServerPool(key: key, shard: self, logger: self.logger)
        pool.paused = self.paused
        self.pools[key] = pool
        return pool
    }

    func existingPool(_ key: PoolKey) -> ServerPool? { self.pools[key] }

    func setPaused(_ paused: Bool) {
        self.paused = paused
        for pool in self.pools.values {
            if paused { pool.paused = true } else { pool.resume() }
        }
    }

    /// Server connections currently lent to clients.
    var activeServers: Int { self.pools.values.reduce(0) { $0 + $1.active } }

    func statementInfo(query: ByteBuffer, parameterTypes: [UInt32], searchPath: String?, database: String, user: String) -> StatementInfo {
        let rewrite = self.rollupSchema != nil && Self.mentionsTimeBucket(query) && self.rewriteAllowed(database: database, user: user)
        let key = StatementMemoKey(query: query, parameterTypes: parameterTypes, searchPath: searchPath, rewrite: rewrite)
        if let info = self.statementMemo[key] { return info }
        // Copy the text out of the client's receive buffer so the memo does not keep that buffer alive.
        let original = ByteBuffer(bytes: query.readableBytesView)
        let rewritten = rewrite ? self.rollupRewrite(original, database: database, user: user) : nil
        let info = StatementInfo(
            query: rewritten ?? original, parameterTypes: parameterTypes, searchPath: searchPath, rewritten: rewritten != nil,
            clientQuery: original)
        if self.statementMemo.count >= Self.statementMemoLimit { self.statementMemo.removeAll(keepingCapacity: true) }
        self.statementMemo[StatementMemoKey(query: original, parameterTypes: parameterTypes, searchPath: searchPath, rewrite: rewrite)] = info
        return info
    }
}

struct StatementMemoKey: Hashable {
    var query: ByteBuffer
    var parameterTypes: [UInt32]
    var searchPath: String?
    /// Whether the rollup rewrite applied when the entry was made (a database may lack the rollups).
    var rewrite: Bool
}

/// What Tidegate knows of a statement text.
struct StatementInfo {
    /// The name under which server connections prepare it: a hash of text, parameter types and the
    /// client's settings (`searchPath` carries the settings fingerprint: search_path,
    /// standard_conforming_strings, TimeZone… change what the text means when parsed).
    let serverName: String
    /// The text sent to the server: as the client sent it (its encoding), or the rollup rewrite of it.
    let query: ByteBuffer
    /// Whether `query` is the rollup rewrite of the client's text.
    let rewritten: Bool
    /// The client's text (what the cache analyses and keys on).
    let clientQuery: ByteBuffer
    let parameterTypes: [UInt32]
    let effect: SessionEffect
    let statementClass: StatementClass

    init(query: ByteBuffer, parameterTypes: [UInt32], searchPath: String?, rewritten: Bool = false, clientQuery: ByteBuffer? = nil) {
        self.query = query
        self.clientQuery = clientQuery ?? query
        self.rewritten = rewritten
        self.parameterTypes = parameterTypes
        var first = FNV1a64()
        var second = FNV1a64(offset: 0x6c62_272e_07bb_0142)
        for byte in query.readableBytesView {
            first.add(byte)
            second.add(byte ^ 0x5A)
        }
        for oid in parameterTypes {
            for shift in stride(from: 0, to: 32, by: 8) {
                first.add(UInt8(truncatingIfNeeded: oid >> UInt32(shift)))
                second.add(UInt8(truncatingIfNeeded: oid >> UInt32(shift)))
            }
        }
        first.add(0)
        for byte in (searchPath ?? "").utf8 {
            first.add(byte)
            second.add(byte)
        }
        self.serverName = "tg_" + String(first.value, radix: 16) + "_" + String(second.value, radix: 16)
        let statements = SQLLexer.statements(in: String(buffer: query))
        self.effect = statements.first.map { SessionEffectClassifier.classify($0) } ?? .none
        self.statementClass = StatementClass.of(firstWord: statements.first?.leadingWords.first)
    }
}

struct FNV1a64 {
    private(set) var value: UInt64

    init(offset: UInt64 = 0xcbf2_9ce4_8422_2325) { self.value = offset }

    mutating func add(_ byte: UInt8) {
        self.value ^= UInt64(byte)
        self.value = self.value &* 0x100_0000_01b3
    }
}
