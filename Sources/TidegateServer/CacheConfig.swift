import Configuration
import SQLAnalysis

extension TidegateConfig {
    /// `cache:` — the result cache (Redis, with an in-process L1 in front) for reads of the relations under
    /// `relations:`, invalidated by time bucket (docs/ARCHITECTURE.md, "The cache tier").
    public struct CacheSettings: Sendable, Equatable {
        public var enabled = false
        public var redisHost = "127.0.0.1"
        public var redisPort = 6379
        public var redisPassword = ""
        public var redisDatabase = 0
        /// Connections to Redis (shared by every event loop).
        public var redisConnections = 4
        public var redisConnectTimeoutMs = 500
        /// A Redis command not answered within this is given up: the query goes to the database.
        public var redisCommandTimeoutMs = 50
        /// Prefix of every Redis key Tidegate writes (instances sharing a Redis share the prefix).
        public var keyPrefix = "tg:"
        /// In-process cache in front of Redis.
        public var l1Bytes = 64 << 20
        /// Larger replies are not cached.
        public var maxEntryBytes = 1 << 20
        /// Lifetime of entries that read only sealed buckets (older than the relation's late window).
        public var sealedTTLMs = 3_600_000
        /// Lifetime of entries that read the live bucket.
        public var liveTTLMs = 2_000
        /// Tags an entry reads at most; wider reads fall back to coarser buckets.
        public var maxTags = 64
        /// Concurrent misses on one key (across instances sharing Redis): the first holds a lock this long
        /// while it fills; the others wait for its entry.
        public var fillLockMs = 2_000
        /// Functions allowed in cached queries besides immutable ones and built-in stable ones.
        public var safeFunctions: [String] = []
        /// Per query fingerprint (as SHOW CACHE lists it): a lifetime, or off.
        public var queries: [String: QuerySetting] = [:]
        /// Per role: accept entries filled up to this long ago even after a write moved them.
        public var roleMaxStalenessMs: [String: Int] = [:]
        public var listener = Listener()

        public init() {}
    }

    public struct QuerySetting: Sendable, Equatable {
        public var enabled = true
        public var ttlMs: Int?
    }

    /// The replication listener: a logical replication connection per database that sees writes bypassing
    /// Tidegate. While it is behind by more than `maxLagMs` (or down), no hits are served in its database.
    public struct Listener: Sendable, Equatable {
        public var enabled = true
        public var databases: [String] = []
        public var maxLagMs = 1_000
        /// Login for the replication connection (needs the REPLICATION attribute); default: the health login.
        public var user = ""
        public var publication = "tidegate"
        public var slotPrefix = "tidegate"
        /// Standby status updates (each asks for a keepalive, which moves the applied position when the
        /// tracked tables are quiet): how long a write through Tidegate waits for its commit at most.
        public var statusIntervalMs = 20
    }

    static func readCache(_ fields: ConfigFields, layout: Layout, into config: inout TidegateConfig) {
        var cache = CacheSettings()
        fields.bool("cache.enabled", &cache.enabled)
        fields.string("cache.redis.host", &cache.redisHost)
        fields.int("cache.redis.port", &cache.redisPort, min: 1, max: 65535)
        fields.string("cache.redis.password", &cache.redisPassword)
        fields.int("cache.redis.database", &cache.redisDatabase, min: 0, max: 1_000)
        fields.int("cache.redis.connections", &cache.redisConnections, min: 1, max: 256)
        fields.int("cache.redis.connect_timeout_ms", &cache.redisConnectTimeoutMs, min: 1)
        fields.int("cache.redis.command_timeout_ms", &cache.redisCommandTimeoutMs, min: 1)
        fields.string("cache.key_prefix", &cache.keyPrefix)
        fields.int("cache.l1_bytes", &cache.l1Bytes, min: 0)
        fields.int("cache.max_entry_bytes", &cache.maxEntryBytes, min: 64, max: 512 << 20)
        fields.int("cache.sealed_ttl_ms", &cache.sealedTTLMs, min: 1)
        fields.int("cache.live_ttl_ms", &cache.liveTTLMs, min: 1)
        fields.int("cache.max_tags", &cache.maxTags, min: 4, max: 4_096)
        fields.int("cache.fill_lock_ms", &cache.fillLockMs, min: 10)
        if let functions = fields.reader.stringArray(forKey: ConfigKey("cache.safe_functions")) {
            cache.safeFunctions = functions.map { $0.lowercased().trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        for fingerprint in layout.cacheQueryNames {
            var setting = QuerySetting()
            fields.bool("cache.queries.\(fingerprint).enabled", &setting.enabled)
            setting.ttlMs = fields.optionalInt("cache.queries.\(fingerprint).ttl_ms", min: 1)
            cache.queries[fingerprint.lowercased()] = setting
        }
        for user in layout.userNames where !user.contains(".") {
            if let staleness = fields.optionalInt("users.\(user).cache_max_staleness_ms", min: 0) {
                cache.roleMaxStalenessMs[user] = staleness
            }
        }
        fields.bool("cache.listener.enabled", &cache.listener.enabled)
        cache.listener.databases = fields.reader.stringArray(forKey: ConfigKey("cache.listener.databases")) ?? [config.storage.database]
        fields.int("cache.listener.max_lag_ms", &cache.listener.maxLagMs, min: 1)
        fields.string("cache.listener.user", &cache.listener.user)
        fields.string("cache.listener.publication", &cache.listener.publication)
        fields.string("cache.listener.slot_prefix", &cache.listener.slotPrefix)
        fields.int("cache.listener.status_interval_ms", &cache.listener.statusIntervalMs, min: 10, max: 10_000)
        for name in [cache.listener.publication, cache.listener.slotPrefix] where !Self.isName(name) {
            fields.problems.append("cache.listener: \"\(name)\" is not a valid publication or slot name (letters, digits, _)")
        }
        config.cache = cache
    }

    /// The relations the cache serves, with their columns, as the analyzer sees them.
    public var cachedRelations: [String: MarketRelation] {
        guard self.cache.enabled else { return [:] }
        var relations: [String: MarketRelation] = [:]
        for relation in self.relations.values where relation.cache {
            relations[relation.name] = MarketRelation(
                name: relation.name, timeColumn: relation.timeColumn, instrumentColumn: relation.instrumentColumn)
        }
        return relations
    }

    /// The `cache.*` rows of SHOW CONFIG (the Redis password is not shown).
    var cacheConfigRows: [[String?]] {
        let cache = self.cache
        var rows: [[String?]] = [
            ["cache.enabled", "\(cache.enabled)"],
            ["cache.redis", "\(cache.redisHost):\(cache.redisPort)/\(cache.redisDatabase)"],
            ["cache.redis.connections", "\(cache.redisConnections)"],
            ["cache.redis.command_timeout_ms", "\(cache.redisCommandTimeoutMs)"],
            ["cache.key_prefix", cache.keyPrefix],
            ["cache.l1_bytes", "\(cache.l1Bytes)"],
            ["cache.max_entry_bytes", "\(cache.maxEntryBytes)"],
            ["cache.sealed_ttl_ms", "\(cache.sealedTTLMs)"],
            ["cache.live_ttl_ms", "\(cache.liveTTLMs)"],
            ["cache.max_tags", "\(cache.maxTags)"],
            ["cache.listener.enabled", "\(cache.listener.enabled)"],
            ["cache.listener.databases", cache.listener.databases.joined(separator: ",")],
            ["cache.listener.max_lag_ms", "\(cache.listener.maxLagMs)"],
        ]
        for (fingerprint, setting) in cache.queries.sorted(by: { $0.key < $1.key }) {
            rows.append(["cache.queries.\(fingerprint)", setting.enabled ? "ttl_ms=\(setting.ttlMs.map { "\($0)" } ?? "default")" : "off"])
        }
        for relation in self.relations.values.sorted(by: { $0.name < $1.name }) {
            rows.append([
                "relations.\(relation.name).cache",
                relation.cache ? "bucket_ms=\(relation.bucketMs) late_window_ms=\(relation.lateWindowMs)" : "off",
            ])
        }
        return rows
    }
}
