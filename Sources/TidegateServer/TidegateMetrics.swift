import CoreMetrics
import NIOConcurrencyHelpers

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
    private let queryCounters: [StatementClass: Counter]
    private let queryTimers: [StatementClass: Timer]
    private let errorCounters = NIOLockedValueBox([String: Counter]())

    init() {
        var counters: [StatementClass: Counter] = [:]
        var timers: [StatementClass: Timer] = [:]
        for statementClass in StatementClass.allCases {
            counters[statementClass] = Counter(label: "tidegate_queries_total", dimensions: [("class", statementClass.rawValue)])
            timers[statementClass] = Timer(label: "db_client_operation_duration", dimensions: [("class", statementClass.rawValue)])
        }
        self.queryCounters = counters
        self.queryTimers = timers
    }

    func query(_ statementClass: StatementClass, nanoseconds: Int64) {
        self.queryCounters[statementClass]?.increment()
        self.queryTimers[statementClass]?.recordNanoseconds(nanoseconds)
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
