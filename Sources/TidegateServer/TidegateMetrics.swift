import CoreMetrics
import NIOConcurrencyHelpers
import Topology

/// Every metric handle, created once with fixed dimensions (never SQL text or user names in labels).
/// Names follow OpenTelemetry's database conventions where one exists.
final class TidegateMetrics: Sendable {
    let clientConnections = Gauge(label: "db_client_connections", dimensions: [("side", "client")])
    let serverConnections = Gauge(label: "db_client_connections", dimensions: [("side", "server")])
    let clientConnectionsRefused = Counter(label: "tidegate_client_connections_refused_total")
    let serverConnects = Counter(label: "tidegate_server_connects_total")
    let serverConnectFailures = Counter(label: "tidegate_server_connect_failures_total")
    let poolWait = Timer(label: "db_client_connection_wait_time")
    let bytesIn = Counter(label: "tidegate_client_bytes_received_total")
    let bytesOut = Counter(label: "tidegate_client_bytes_sent_total")
    let authFailures = Counter(label: "tidegate_auth_failures_total")
    let protocolErrors = Counter(label: "tidegate_protocol_errors_total")
    let readRetries = Counter(label: "tidegate_read_retries_total")
    let failoverWaits = Counter(label: "tidegate_failover_waits_total")
    let failoverTimeouts = Counter(label: "tidegate_failover_wait_timeouts_total")
    let splitBrain = Gauge(label: "tidegate_split_brain")
    private let nodeGauges = NIOLockedValueBox([String: (up: Gauge, primary: Gauge, lagSeconds: Gauge, lagBytes: Gauge)]())
    private let routedCounters = NIOLockedValueBox([String: Counter]())
    /// Indexed by `StatementClass.index`.
    private let queryCounters: [Counter]
    private let queryTimers: [Timer]
    private let errorCounters = NIOLockedValueBox([String: Counter]())
    // The cache tier (published once a second from its statistics).
    let cacheHitDuration = Timer(label: "tidegate_cache_hit_duration")
    let cacheHits = Counter(label: "tidegate_cache_hits_total")
    let cacheMisses = Counter(label: "tidegate_cache_misses_total")
    let cacheBypasses = Counter(label: "tidegate_cache_bypasses_total")
    let cacheFills = Counter(label: "tidegate_cache_fills_total")
    let cacheFillsRefused = Counter(label: "tidegate_cache_fills_refused_total")
    let cacheInvalidations = Counter(label: "tidegate_cache_invalidations_total")
    let cacheTagUpdates = Counter(label: "tidegate_cache_tag_updates_total")
    let cacheL1Entries = Gauge(label: "tidegate_cache_l1_entries")
    let cacheL1Bytes = Gauge(label: "tidegate_cache_l1_bytes")
    let cacheRedisUp = Gauge(label: "tidegate_cache_redis_up")
    let cacheGenerationOwed = Gauge(label: "tidegate_cache_generation_owed")
    private let listenerLagGauges = NIOLockedValueBox([String: Gauge]())

    init() {
        self.queryCounters = StatementClass.allCases.map {
            Counter(label: "tidegate_queries_total", dimensions: [("class", $0.rawValue)])
        }
        self.queryTimers = StatementClass.allCases.map {
            Timer(label: "db_client_operation_duration", dimensions: [("class", $0.rawValue)])
        }
    }

    func query(_ statementClass: StatementClass, nanoseconds: Int64) {
        self.queryCounters[statementClass.index].increment()
        self.queryTimers[statementClass.index].recordNanoseconds(nanoseconds)
    }

    /// A statement (a transaction, in transaction pooling) sent to `node` for `reason`. Node names come from
    /// the configuration and reasons from a fixed list, so the label set stays bounded.
    func routed(node: String, reason: String) -> Counter {
        let key = node + "\u{0}" + reason
        return self.routedCounters.withLockedValue { counters in
            if let counter = counters[key] { return counter }
            let counter = Counter(label: "tidegate_routed_total", dimensions: [("node", node), ("reason", reason)])
            counters[key] = counter
            return counter
        }
    }

    /// Node gauges from a published topology view.
    func topology(_ view: TopologyView) {
        self.splitBrain.record(view.splitBrain ? 1 : 0)
        for node in view.nodes {
            let gauges = self.nodeGauges.withLockedValue { gauges in
                if let existing = gauges[node.name] { return existing }
                let made = (
                    up: Gauge(label: "tidegate_node_up", dimensions: [("node", node.name)]),
                    primary: Gauge(label: "tidegate_node_primary", dimensions: [("node", node.name)]),
                    lagSeconds: Gauge(label: "tidegate_node_lag_seconds", dimensions: [("node", node.name)]),
                    lagBytes: Gauge(label: "tidegate_node_lag_bytes", dimensions: [("node", node.name)])
                )
                gauges[node.name] = made
                return made
            }
            gauges.up.record(node.state == .down ? 0 : 1)
            gauges.primary.record(node.role == .primary ? 1 : 0)
            gauges.lagSeconds.record(node.lagSeconds ?? -1)
            gauges.lagBytes.record(Double(node.lagBytes ?? 0))
        }
    }

    func cacheHit(nanoseconds: Int64) { self.cacheHitDuration.recordNanoseconds(nanoseconds) }

    /// The replication listener's lag per database (databases come from the configuration).
    func listenerLag(database: String, milliseconds: Int64?) {
        let gauge = self.listenerLagGauges.withLockedValue { gauges in
            if let gauge = gauges[database] { return gauge }
            let gauge = Gauge(label: "tidegate_cache_listener_lag_seconds", dimensions: [("database", database)])
            gauges[database] = gauge
            return gauge
        }
        gauge.record(milliseconds.map { Double($0) / 1_000 } ?? -1)
    }

    /// Counts an error by SQLSTATE class (first two characters).
    func error(sqlState: String) {
        let sqlClass = String(sqlState.prefix(2))
        let counter = self.errorCounters.withLockedValue { counters in
            if let counter = counters[sqlClass] { return counter }
            let counter = Counter(label: "tidegate_errors_total", dimensions: [("sqlstate_class", sqlClass)])
            counters[sqlClass] = counter
            return counter
        }
        counter.increment()
    }
}

/// The coarse class of a statement, from its first keyword.
enum StatementClass: String, CaseIterable, Sendable {
    case read, write, ddl, transaction, set, utility, copy, admin

    var index: Int {
        switch self {
        case .read: return 0
        case .write: return 1
        case .ddl: return 2
        case .transaction: return 3
        case .set: return 4
        case .utility: return 5
        case .copy: return 6
        case .admin: return 7
        }
    }

    static func of(firstWord: String?) -> StatementClass {
        switch firstWord ?? "" {
        case "select", "with", "values", "table", "show", "explain", "fetch": return .read
        case "insert", "update", "delete", "merge": return .write
        case "copy": return .copy
        case "create", "alter", "drop", "truncate", "grant", "revoke", "comment", "reindex", "cluster", "refresh":
            return .ddl
        case "begin", "start", "commit", "rollback", "savepoint", "release", "end", "abort": return .transaction
        case "set", "reset", "discard": return .set
        default: return .utility
        }
    }
}
