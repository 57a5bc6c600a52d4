import Configuration
import Foundation
import SQLAnalysis
import SystemPackage
import Yams

/// Pooling mode: how long a client keeps a server connection.
public enum PoolMode: String, Sendable, CaseIterable {
    case session
    case transaction
}

/// How Tidegate authenticates clients.
public enum ClientAuthMethod: String, Sendable, CaseIterable {
    case scramSHA256 = "scram-sha-256"
    case md5
    case trust
}

/// The whole configuration, as plain values with defaults. Reading it from YAML, the environment and
/// the command line is `TidegateConfig.load`; nothing here reads global state.
public struct TidegateConfig: Sendable, Equatable {
    public struct Listen: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 6432
        public var maxClientConnections = 10_000
        public var tlsCertificate = ""
        public var tlsPrivateKey = ""
        public var tlsEnabled: Bool { !self.tlsCertificate.isEmpty && !self.tlsPrivateKey.isEmpty }
    }

    public struct HTTP: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 9187
    }

    public struct Limits: Sendable, Equatable {
        public var maxMessageBytes = 64 * 1024 * 1024
        public var startupTimeoutMs = 10_000
        public var idleInTransactionTimeoutMs = 0
        /// Bytes a client may have queued while it waits for a server connection before Tidegate stops
        /// reading from it.
        public var clientBufferBytes = 1024 * 1024
    }

    public struct Pool: Sendable, Equatable {
        public var mode = PoolMode.transaction
        public var minSize = 0
        public var maxSize = 40
        public var connectTimeoutMs = 5_000
        public var checkoutTimeoutMs = 30_000
        public var idleTimeoutMs = 600_000
        public var serverLifetimeMs = 3_600_000
        public var livenessCheckAfterMs = 30_000
        /// Turn unnamed Parse messages into cached server-side statements, so extended-protocol clients
        /// reuse plans.
        public var prepareUnnamed = true
        /// Server-side prepared statements kept per server connection (least recently used closed first).
        public var maxPreparedPerServer = 1_000
    }

    public struct Node: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 5432
    }

    /// A PostgreSQL server Tidegate may send statements to. Its role (primary or replica) is discovered
    /// by the health checker, never configured.
    public struct NamedNode: Sendable, Equatable {
        public var name: String
        public var region: String
        public var endpoint: Node
    }

    public struct Region: Sendable, Equatable {
        public var name: String
        /// Regions tried, in this order, when no replica here can take a read.
        public var fallback: [String]
        public var nodes: [NamedNode]
    }

    /// Read-your-writes: how far a replica must have replayed before it may serve a client's read.
    public enum ReadYourWrites: String, Sendable, CaseIterable {
        /// No check: any replica within the lag limit.
        case none
        /// Past the client session's own last write (the default).
        case session
        /// Past the last write any client made through this Tidegate.
        case global
    }

    public struct Routing: Sendable, Equatable {
        public var readYourWrites = ReadYourWrites.session
        /// Replicas whose replay lags more than this (seconds measure) serve no reads.
        public var maxLagMs = 1_000
        /// Replicas whose replay lags more than this many bytes of WAL serve no reads (0: no limit).
        public var maxLagBytes = 0
        /// Statements that need a primary wait this long for one to be discovered, then fail with 57P03.
        public var failoverWaitMs = 15_000
        /// A read that fails before anything reached the client is retried on another node.
        public var retryReads = true
        /// Volatile functions that may still run on a replica (on top of the built-in list).
        public var safeFunctions: [String] = []
    }

    public struct Health: Sendable, Equatable {
        public var intervalMs = 500
        public var timeoutMs = 1_000
        /// Probes a failed node must pass in a row before it counts as up again (flap damping).
        public var upAfter = 3
        /// The user and database the health checker logs in with (default: the first configured user
        /// with a plain password; database postgres).
        public var user = ""
        public var database = "postgres"
    }

    /// A market-data relation declared under `relations:` (ticks, quotes, the bar rollups): its time and
    /// instrument columns and its storage policies; for ticks, whether queries are rewritten to the rollups.
    public struct Relation: Sendable, Equatable {
        public var name: String
        public var timeColumn = "ts"
        public var instrumentColumn = "symbol"
        /// Rows older than this many days are dropped (partitions or chunks); nil keeps them.
        public var retentionDays: Int?
        /// Chunks older than this many days are compressed (TimescaleDB); nil leaves them.
        public var compressAfterDays: Int?
        /// How often a rollup (bars) table or continuous aggregate is refreshed; nil: the schema's default.
        public var refreshIntervalMs: Int?
        /// Multi-timeframe rewrite: time_bucket aggregates over this relation read the rollups where they
        /// are materialized.
        public var rewrite = false
        /// Results over this relation may be cached (`cache.enabled` switches the tier as a whole).
        public var cache = true
        /// The finest time bucket of cache invalidation; coarser levels are this × 8, × 64, …
        public var bucketMs = 60_000
        /// Rows may arrive this late: buckets that ended longer ago are sealed and their entries live long.
        public var lateWindowMs = 5_000
        /// Lifetime of sealed entries of this relation; nil: `cache.sealed_ttl_ms`.
        public var cacheTTLMs: Int?
        /// Insert coalescing (BatchConfig.swift).
        public var batch = BatchSettings()

        public init(name: String) { self.name = name }
    }

    public struct User: Sendable, Equatable {
        public var name: String
        /// Plain password, or a SCRAM verifier.
        public var password: String
        /// Password Tidegate uses to log in to the backend when `password` is a verifier.
        public var backendPassword: String?
        public var admin: Bool
    }

    public var listen = Listen()
    public var http = HTTP()
    public var limits = Limits()
    public var pool = Pool()
    /// The single backend of a configuration without `regions` (node name `primary`).
    public var primary = Node(host: "127.0.0.1", port: 5432)
    /// The region of this Tidegate instance: its clients' reads go to replicas there first.
    public var region = "default"
    /// Regions with their nodes; empty means one node, `primary`, in region `default`.
    public var regions: [Region] = []
    public var routing = Routing()
    public var health = Health()
    public var authMethod = ClientAuthMethod.scramSHA256
    public var users: [String: User] = [:]
    /// Market-data relations by name (`relations:`).
    public var relations: [String: Relation] = [:]
    /// Storage maintenance and analytics (`storage:`, StorageConfig.swift).
    public var storage = Storage()
    /// The result cache (`cache:`, CacheConfig.swift).
    public var cache = CacheSettings()
    /// Event-loop threads (0: one per CPU core). Each serves its own clients with the server connections
    /// it opened; pool.max_size is one budget over all of them.
    public var threads = 1
    /// On SIGTERM, how long open transactions may run before their clients are disconnected.
    public var shutdownTimeoutMs = 30_000
    public var logLevel = "info"
    /// The virtual database name of the admin console.
    public static let adminDatabase = "tidegate"

    public init() {}

    /// The relation whose time_bucket aggregates are rewritten to the bars rollups (`rewrite: true`), as
    /// the rewriter sees it; nil when the rewrite is off.
    public var rollupSchema: RollupSchema? {
        guard let relation = self.relations.values.sorted(by: { $0.name < $1.name }).first(where: \.rewrite) else { return nil }
        var schema = RollupSchema(relation: relation.name, timeColumn: relation.timeColumn, instrumentColumn: relation.instrumentColumn)
        schema.columns.formUnion([relation.timeColumn, relation.instrumentColumn])
        schema.notNullColumns = [relation.timeColumn, relation.instrumentColumn, schema.priceColumn, schema.sizeColumn]
        return schema
    }

    /// Every backend node, in configuration order.
    public var nodes: [NamedNode] {
        if self.regions.isEmpty { return [NamedNode(name: "primary", region: self.region, endpoint: self.primary)] }
        return self.regions.flatMap(\.nodes)
    }

    /// Whether statements are routed between several nodes (otherwise every statement goes to the only one).
    public var routes: Bool { self.regions.count > 1 || (self.regions.first?.nodes.count ?? 0) > 1 }

    public func node(named name: String) -> NamedNode? { self.nodes.first { $0.name == name } }

    /// The fallback regions of `region`, in order (every other region when none are configured).
    public func fallbackRegions(of region: String) -> [String] {
        if let configured = self.regions.first(where: { $0.name == region }), !configured.fallback.isEmpty {
            return configured.fallback
        }
        return self.regions.map(\.name).filter { $0 != region }
    }

    /// The login the health checker and the function catalog loader use: `health.user` (or the first
    /// configured user with a usable password) and its backend password; nil when there is none.
    public var healthLogin: (user: String, password: String?)? {
        func password(_ user: User) -> String? {
            user.backendPassword ?? (user.password.hasPrefix("SCRAM-SHA-256$") || user.password.isEmpty ? nil : user.password)
        }
        if !self.health.user.isEmpty {
            return (self.health.user, self.users[self.health.user].flatMap(password))
        }
        guard let user = self.users.values.sorted(by: { $0.name < $1.name }).first(where: { password($0) != nil }) else {
            return nil
        }
        return (user.name, password(user))
    }
}

public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var problems: [String]
    public var description: String { self.problems.map { "config: \($0)" }.joined(separator: "\n") }
}

extension TidegateConfig {
    /// Reads the configuration: command-line overrides first, then TIDEGATE_* environment variables, then
    /// the YAML file. Every key of config/tidegate.yaml can be overridden from the environment:
    /// `listen.port` is `TIDEGATE_LISTEN_PORT`. Throws `ConfigError` listing every problem found.
    public static func load(
        path: String, overrides: [String: String] = [:],
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> TidegateConfig {
        guard FileManager.default.fileExists(atPath: path) else {
            throw ConfigError(problems: ["file not found: \(path)"])
        }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(problems: ["cannot read \(path): \(error)"])
        }
        let layout: Layout
        do {
            layout = try Self.layout(inYAML: text)
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError(problems: ["\(path) is not valid YAML: \(error)"])
        }
        let file: FileProvider<YAMLSnapshot>
        do {
            file = try await FileProvider<YAMLSnapshot>(filePath: FilePath(path))
        } catch {
            throw ConfigError(problems: ["cannot parse \(path): \(error)"])
        }
        var prefixed: [String: String] = [:]
        for (key, value) in environment where key.hasPrefix("TIDEGATE_") {
            prefixed[String(key.dropFirst("TIDEGATE_".count))] = value
        }
        let reader = ConfigReader(providers: [
            InMemoryProvider(values: Dictionary(uniqueKeysWithValues: overrides.map { (AbsoluteConfigKey($0.key.split(separator: ".").map(String.init)), ConfigValue(.string($0.value), isSecret: false)) })),
            EnvironmentVariablesProvider(environmentVariables: prefixed),
            file,
        ])
        return try Self.read(reader, layout: layout)
    }

    /// The names the file gives to mapping keys: users, regions and their nodes (swift-configuration reads
    /// values by key but does not enumerate mappings).
    struct Layout: Equatable {
        var userNames: [String] = []
        var relationNames: [String] = []
        /// Rule names under `relations.<name>.batch.rules`, by relation.
        var batchRuleNames: [String: [String]] = [:]
        /// Fingerprints under `cache.queries`.
        var cacheQueryNames: [String] = []
        /// Region names with their node names, in file order.
        var regions: [(name: String, nodes: [String])] = []

        static func == (lhs: Layout, rhs: Layout) -> Bool {
            lhs.userNames == rhs.userNames && lhs.relationNames == rhs.relationNames && lhs.batchRuleNames == rhs.batchRuleNames && lhs.cacheQueryNames == rhs.cacheQueryNames && lhs.regions.map(\.name) == rhs.regions.map(\.name)
                && lhs.regions.map(\.nodes) == rhs.regions.map(\.nodes)
        }
    }

    static func layout(inYAML text: String) throws -> Layout {
        var layout = Layout()
        guard let root = try Yams.compose(yaml: text) else { return layout }
        guard let mapping = root.mapping else { throw ConfigError(problems: ["the top level must be a mapping"]) }
        if let users = mapping["users"] {
            guard let usersMapping = users.mapping else {
                throw ConfigError(problems: ["users: must be a mapping of user name to settings"])
            }
            layout.userNames = usersMapping.keys.compactMap(\.string)
        }
        if let relations = mapping["relations"] {
            guard let relationsMapping = relations.mapping else {
                throw ConfigError(problems: ["relations: must be a mapping of relation name to its settings"])
            }
            layout.relationNames = relationsMapping.keys.compactMap(\.string)
            for (key, value) in relationsMapping {
                guard let name = key.string, let rules = value.mapping?["batch"]?.mapping?["rules"] else { continue }
                guard let rulesMapping = rules.mapping else {
                    throw ConfigError(problems: ["relations.\(name).batch.rules: must be a mapping of rule name to its check"])
                }
                layout.batchRuleNames[name] = rulesMapping.keys.compactMap(\.string)
            }
        }
        if let queries = mapping["cache"]?.mapping?["queries"] {
            guard let queriesMapping = queries.mapping else {
                throw ConfigError(problems: ["cache.queries: must be a mapping of query fingerprint to its settings"])
            }
            layout.cacheQueryNames = queriesMapping.keys.compactMap(\.string)
        }
        if let regions = mapping["regions"] {
            guard let regionsMapping = regions.mapping else {
                throw ConfigError(problems: ["regions: must be a mapping of region name to its nodes"])
            }
            for (key, value) in regionsMapping {
                guard let name = key.string else { continue }
                guard let nodes = value.mapping?["nodes"]?.mapping else {
                    throw ConfigError(problems: ["regions.\(name).nodes: must be a mapping of node name to host and port"])
                }
                layout.regions.append((name, nodes.keys.compactMap(\.string)))
            }
        }
        return layout
    }

    static func read(_ reader: ConfigReader, layout: Layout) throws -> TidegateConfig {
        var config = TidegateConfig()
        var problems: [String] = []

        let fields = ConfigFields(reader)
        func int(_ key: String, _ value: inout Int, min: Int = 0, max: Int = Int.max) { fields.int(key, &value, min: min, max: max) }
        func string(_ key: String, _ value: inout String) { fields.string(key, &value) }
        func bool(_ key: String, _ value: inout Bool) { fields.bool(key, &value) }

        string("listen.host", &config.listen.host)
        int("listen.port", &config.listen.port, min: 0, max: 65535)
        int("listen.max_client_connections", &config.listen.maxClientConnections, min: 1)
        string("listen.tls_certificate", &config.listen.tlsCertificate)
        string("listen.tls_private_key", &config.listen.tlsPrivateKey)
        if config.listen.tlsCertificate.isEmpty != config.listen.tlsPrivateKey.isEmpty {
            problems.append("listen.tls_certificate and listen.tls_private_key must be set together")
        }
        for path in [config.listen.tlsCertificate, config.listen.tlsPrivateKey] where !path.isEmpty {
            if !FileManager.default.isReadableFile(atPath: path) { problems.append("TLS file not readable: \(path)") }
        }
        func choice<Value: RawRepresentable & CaseIterable>(_ key: String, _ value: inout Value) where Value.RawValue == String {
            var text = value.rawValue
            string(key, &text)
            if let parsed = Value(rawValue: text) {
                value = parsed
            } else {
                problems.append("\(key): \"\(text)\" is not one of \(Value.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }

        string("http.host", &config.http.host)
        int("http.port", &config.http.port, min: 0, max: 65535)
        int("limits.max_message_bytes", &config.limits.maxMessageBytes, min: 1024, max: 1 << 30)
        int("limits.startup_timeout_ms", &config.limits.startupTimeoutMs, min: 100)
        int("limits.idle_in_transaction_timeout_ms", &config.limits.idleInTransactionTimeoutMs)
        int("limits.client_buffer_bytes", &config.limits.clientBufferBytes, min: 8192)
        choice("pool.mode", &config.pool.mode)
        int("pool.min_size", &config.pool.minSize)
        int("pool.max_size", &config.pool.maxSize, min: 1)
        if config.pool.minSize > config.pool.maxSize { problems.append("pool.min_size is larger than pool.max_size") }
        int("pool.connect_timeout_ms", &config.pool.connectTimeoutMs, min: 1)
        int("pool.checkout_timeout_ms", &config.pool.checkoutTimeoutMs, min: 1)
        int("pool.idle_timeout_ms", &config.pool.idleTimeoutMs, min: 1)
        int("pool.server_lifetime_ms", &config.pool.serverLifetimeMs, min: 1)
        int("pool.liveness_check_after_ms", &config.pool.livenessCheckAfterMs)
        bool("pool.prepare_unnamed", &config.pool.prepareUnnamed)
        int("pool.max_prepared_per_server", &config.pool.maxPreparedPerServer, min: 1)
        string("primary.host", &config.primary.host)
        int("primary.port", &config.primary.port, min: 1, max: 65535)
        string("region", &config.region)
        var nodeNames: Set<String> = []
        for (regionName, nodes) in layout.regions {
            guard Self.isName(regionName) else {
                problems.append("regions: \"\(regionName)\" is not a valid region name (letters, digits, - and _)")
                continue
            }
            let fallback = reader.stringArray(forKey: ConfigKey("regions.\(regionName).fallback")) ?? []
            var region = Region(name: regionName, fallback: fallback, nodes: [])
            for nodeName in nodes {
                guard Self.isName(nodeName) else {
                    problems.append("regions.\(regionName).nodes: \"\(nodeName)\" is not a valid node name (letters, digits, - and _)")
                    continue
                }
                guard nodeNames.insert(nodeName).inserted else {
                    problems.append("regions.\(regionName).nodes: node \"\(nodeName)\" is named twice")
                    continue
                }
                var endpoint = Node(host: "127.0.0.1", port: 5432)
                string("regions.\(regionName).nodes.\(nodeName).host", &endpoint.host)
                int("regions.\(regionName).nodes.\(nodeName).port", &endpoint.port, min: 1, max: 65535)
                region.nodes.append(NamedNode(name: nodeName, region: regionName, endpoint: endpoint))
            }
            config.regions.append(region)
        }
        if !config.regions.isEmpty {
            let names = config.regions.map(\.name)
            if reader.string(forKey: ConfigKey("region")) == nil { config.region = names[0] }
            if !names.contains(config.region) {
                problems.append("region: \"\(config.region)\" is not one of the configured regions (\(names.joined(separator: ", ")))")
            }
            for region in config.regions {
                for fallback in region.fallback where !names.contains(fallback) || fallback == region.name {
                    problems.append("regions.\(region.name).fallback: \"\(fallback)\" is not another configured region")
                }
                if region.nodes.isEmpty { problems.append("regions.\(region.name).nodes: no nodes") }
            }
        }
        choice("routing.read_your_writes", &config.routing.readYourWrites)
        int("routing.max_lag_ms", &config.routing.maxLagMs)
        int("routing.max_lag_bytes", &config.routing.maxLagBytes)
        int("routing.failover_wait_ms", &config.routing.failoverWaitMs)
        bool("routing.retry_reads", &config.routing.retryReads)
        if let functions = reader.stringArray(forKey: ConfigKey("routing.safe_functions")) {
            config.routing.safeFunctions = functions.map { $0.lowercased().trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        int("health.interval_ms", &config.health.intervalMs, min: 50)
        int("health.timeout_ms", &config.health.timeoutMs, min: 50)
        int("health.up_after", &config.health.upAfter, min: 1, max: 100)
        string("health.user", &config.health.user)
        string("health.database", &config.health.database)
        Self.readStorage(fields, into: &config.storage)
        Self.readCache(fields, layout: layout, into: &config)
        choice("auth.method", &config.authMethod)
        int("threads", &config.threads, min: 0, max: 256)
        if config.threads == 0 { config.threads = max(1, ProcessInfo.processInfo.activeProcessorCount) }
        int("shutdown_timeout_ms", &config.shutdownTimeoutMs)
        string("log_level", &config.logLevel)
        if !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(config.logLevel) {
            problems.append("log_level: \"\(config.logLevel)\" is not a log level")
        }
        for name in layout.userNames {
            guard !name.isEmpty, !name.contains(".") else {
                problems.append("users: \"\(name)\" is not a valid user name (no dots)")
                continue
            }
            var password = ""
            string("users.\(name).password", &password)
            var backendPassword = ""
            string("users.\(name).backend_password", &backendPassword)
            var admin = false
            bool("users.\(name).admin", &admin)
            if password.hasPrefix("SCRAM-SHA-256$") && backendPassword.isEmpty {
                problems.append(
                    "users.\(name): password is a SCRAM verifier, so backend_password is needed to log in to the server")
            }
            config.users[name] = User(
                name: name, password: password, backendPassword: backendPassword.isEmpty ? nil : backendPassword,
                admin: admin)
        }
        for name in layout.relationNames {
            guard Self.isName(name) else {
                problems.append("relations: \"\(name)\" is not a valid relation name (letters, digits, - and _)")
                continue
            }
            var relation = Relation(name: name)
            let key = "relations.\(name)"
            string("\(key).time_column", &relation.timeColumn)
            string("\(key).instrument_column", &relation.instrumentColumn)
            func optionalInt(_ suffix: String, min: Int) -> Int? { fields.optionalInt("\(key).\(suffix)", min: min) }
            relation.retentionDays = optionalInt("retention_days", min: 1)
            relation.compressAfterDays = optionalInt("compress_after_days", min: 1)
            relation.refreshIntervalMs = optionalInt("refresh_interval_ms", min: 1_000)
            bool("\(key).rewrite", &relation.rewrite)
            bool("\(key).cache", &relation.cache)
            int("\(key).bucket_ms", &relation.bucketMs, min: 1, max: 86_400_000)
            int("\(key).late_window_ms", &relation.lateWindowMs, min: 0)
            relation.cacheTTLMs = optionalInt("cache_ttl_ms", min: 0)
            relation.batch = Self.readBatch(fields, relation: name, ruleNames: layout.batchRuleNames[name] ?? [])
            config.relations[name] = relation
        }
        let rewritten = config.relations.values.filter(\.rewrite).map(\.name).sorted()
        if rewritten.count > 1 {
            problems.append("relations: rewrite is on for \(rewritten.joined(separator: " and ")); the bars rollups belong to one relation")
        }
        if config.routes && config.healthLogin == nil {
            problems.append("health.user: no user with a plain password (or backend_password) to probe the nodes with")
        }
        if config.users.isEmpty && config.authMethod != .trust {
            problems.append("users: no users configured, so nobody can log in")
        }
        problems += fields.problems
        fields.problems = []
        if !problems.isEmpty { throw ConfigError(problems: problems) }
        return config
    }

    static func isName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || byte == 0x2D
                || byte == 0x5F
        }
    }
}
