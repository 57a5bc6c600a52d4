import Foundation
import NIOCore
import PostgresWire
import SQLAnalysis
import Topology

/// The admin console's commands. Each returns rows; none touches a channel.
struct AdminCommands {
    let runtime: Runtime

    static let help: [(String, String)] = [
        ("SHOW POOLS", "server connections per (database, user, node): active, idle, waiting clients"),
        ("SHOW CLIENTS", "client connections: user, database, state, pinned and why"),
        ("SHOW SERVERS", "server connections: node, state, owner, prepared statements"),
        ("SHOW STATS", "queries, transactions, bytes, average query time, statements rewritten to a rollup"),
        ("SHOW CONFIG", "the configuration in force"),
    ] + Self.storageHelp + [
    ] + Self.cacheHelp + Self.batchHelp + [
        ("SHOW NODES", "each node: region, discovered role, state, replay position, lag, statements in flight"),
        ("SHOW REGIONS", "each region: its nodes, fallback order, primary, replicas up"),
        ("DRAIN node", "send no new work to a node; work in flight finishes"),
        ("UNDRAIN node", "let a drained node take work again"),
        ("EXPLAIN REWRITE sql", "the multi-timeframe rewrite of a query: the rollup it reads and the text sent, or why it is sent as it is"),
        ("RELOAD", "re-read the configuration file (like SIGHUP)"),
        ("PAUSE", "wait until no server connection is in use, then hold new work"),
        ("RESUME", "let held work go on"),
        ("SHOW HELP", "this list"),
    ]

    func execute(_ query: String) async -> AdminResult {
        let raw = query.split(whereSeparator: { $0.isWhitespace || $0 == ";" }).map(String.init)
        let words = raw.map { $0.uppercased() }
        guard !words.isEmpty else { return .empty }
        if let result = await self.cache(words, raw: raw, query: query) { return result }
        if let result = self.batches(words) { return result }
        if words.count >= 2 && words[0] == "EXPLAIN" && words[1] == "REWRITE" {
            return self.explainRewrite(query)
        }
        if words.count == 2 && (words[0] == "DRAIN" || words[0] == "UNDRAIN") {
            let node = raw[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
            guard self.runtime.setDraining(node, words[0] == "DRAIN") else {
                let names = self.runtime.config.nodes.map(\.name).joined(separator: ", ")
                return .error(
                    ErrorFields(severity: "ERROR", sqlState: "42704", message: "no node named \"\(node)\" (nodes: \(names))"))
            }
            return .command(words[0])
        }
        do {
            switch words {
            case ["SHOW", "POOLS"]: return try await self.pools()
            case ["SHOW", "CLIENTS"]: return try await self.clients()
            case ["SHOW", "SERVERS"]: return try await self.servers()
            case ["SHOW", "STATS"]: return try await self.stats()
            case ["SHOW", "CONFIG"]: return self.showConfig()
            case ["SHOW", "NODES"]: return try await self.nodes()
            case ["SHOW", "REGIONS"]: return self.regions()
            case ["SHOW", "HELP"]:
                return .rows(columns: ["command", "description"], rows: Self.help.map { [$0.0, $0.1] }, tag: "SHOW")
            case ["RELOAD"]: return await self.reload()
            case ["PAUSE"]: return try await self.pause()
            case ["RESUME"]:
                _ = try await self.runtime.gather { $0.setPaused(false) }
                return .command("RESUME")
            default:
                if let result = await self.storage(words) { return result }
                return .error(
                    ErrorFields(
                        severity: "ERROR", sqlState: "42601",
                        message: "unknown admin command: \(query.trimmingCharacters(in: .whitespacesAndNewlines))",
                        hint: "SHOW HELP lists the commands."))
            }
        } catch {
            return .error(ErrorFields(severity: "ERROR", sqlState: "XX000", message: "admin command failed: \(error)"))
        }
    }

    private func pools() async throws -> AdminResult {
        let rows: [[[String?]]] = try await self.runtime.gather { shard in
            shard.pools.values.sorted { $0.key.description < $1.key.description }.map { pool in
                let waitingClients = shard.sessions.values.filter { $0.stateName == "waiting" }.count
                _ = waitingClients
                return [
                    pool.key.database, pool.key.user, pool.key.node, "\(pool.active)", "\(pool.idle.count)",
                    "\(pool.size)", "\(pool.waiting)", "\(pool.maxSize)", "\(pool.totalCheckouts)",
                    "\(pool.totalWaits)", "\(pool.maxWaitNanos / 1000)", pool.paused ? "paused" : "running",
                ]
            }
        }
        // Merge the loops' shares of each pool.
        var merged: [String: [String?]] = [:]
        var order: [String] = []
        for row in rows.flatMap({ $0 }) {
            let key = "\(row[0] ?? "")/\(row[1] ?? "")/\(row[2] ?? "")"
            if var existing = merged[key] {
                // Counts add up over the loops; max_size is one budget for all of them.
                for index in 3...10 where index != 10 && index != 7 {
                    existing[index] = "\((Int(existing[index] ?? "0") ?? 0) + (Int(row[index] ?? "0") ?? 0))"
                }
                existing[10] = "\(max(Int(existing[10] ?? "0") ?? 0, Int(row[10] ?? "0") ?? 0))"
                merged[key] = existing
            } else {
                merged[key] = row
                order.append(key)
            }
        }
        return .rows(
            columns: [
                "database", "user", "node", "server_active", "server_idle", "server_total", "clients_waiting",
                "max_size", "checkouts", "waits", "max_wait_us", "state",
            ],
            rows: order.compactMap { merged[$0] }, tag: "SHOW")
    }

    private func nodes() async throws -> AdminResult {
        let view = self.runtime.topology
        let inFlight = try await self.runtime.gather { $0.inFlight }
        let configured = self.runtime.config.nodes
        let rows: [[String?]] = configured.map { node in
            let snapshot = view.nodes.first { $0.name == node.name }
            let detail = view.details[node.name]
            let busy = inFlight.reduce(0) { $0 + $1[node.name, default: 0] }
            var state = snapshot?.state.rawValue ?? "unknown"
            if view.splitBrain && snapshot?.role == .primary && snapshot?.state != .down { state += " (split-brain)" }
            return [
                node.name, node.region, node.endpoint.host, "\(node.endpoint.port)", snapshot?.role.rawValue ?? "unknown", state,
                snapshot?.lsn?.description, detail?.receiveLSN?.description, snapshot?.lagBytes.map { "\($0)" },
                snapshot?.lagSeconds.map { String(format: "%.3f", $0) }, "\(busy)",
                detail?.probeMs.map { String(format: "%.2f", $0) }, detail?.lastError,
            ]
        }
        return .rows(
            columns: [
                "node", "region", "host", "port", "role", "state", "lsn", "receive_lsn", "lag_bytes", "lag_seconds", "in_flight",
                "probe_ms", "error",
            ],
            rows: rows, tag: "SHOW")
    }

    private func regions() -> AdminResult {
        let config = self.runtime.config
        let view = self.runtime.topology
        let regions = config.regions.isEmpty
            ? [TidegateConfig.Region(name: config.region, fallback: [], nodes: config.nodes)] : config.regions
        let rows: [[String?]] = regions.map { region in
            let names = region.nodes.map(\.name)
            let snapshots = view.nodes.filter { names.contains($0.name) }
            let primary = snapshots.first { $0.role == .primary && $0.state != .down }?.name
            let replicasUp = snapshots.filter { $0.role == .replica && $0.state == .up }.count
            return [
                region.name, region.name == config.region ? "yes" : "no",
                config.fallbackRegions(of: region.name).joined(separator: ", "), names.joined(separator: ", "), primary,
                "\(replicasUp)",
            ]
        }
        return .rows(columns: ["region", "local", "fallback", "nodes", "primary", "replicas_up"], rows: rows, tag: "SHOW")
    }

    private func clients() async throws -> AdminResult {
        let rows: [[[String?]]] = try await self.runtime.gather { shard in
            shard.sessions.values.sorted { $0.id < $1.id }.map { session in
                let age = (NIODeadline.now() - session.connectedAt).nanoseconds / 1_000_000_000
                return [
                    "\(session.id)", session.userName, session.database, session.applicationName, session.stateName,
                    session.pinReason == nil ? "no" : "yes", session.pinReason, session.serverID.map { "\($0)" },
                    session.remoteAddress, session.tls ? "yes" : "no", "\(age)", "\(session.queries)",
                    session.processID == 0 ? nil : "\(session.processID)",
                ]
            }
        }
        return .rows(
            columns: [
                "id", "user", "database", "application_name", "state", "pinned", "pin_reason", "server_id", "address",
                "tls", "connected_seconds", "statements", "cancel_pid",
            ],
            rows: rows.flatMap { $0 }, tag: "SHOW")
    }

    private func servers() async throws -> AdminResult {
        let rows: [[[String?]]] = try await self.runtime.gather { shard in
            shard.pools.values.flatMap { $0.serverRows() }
        }
        return .rows(
            columns: [
                "id", "user", "database", "node", "address", "state", "backend_pid", "client_cancel_pid",
                "prepared_statements", "age_seconds",
            ],
            rows: rows.flatMap { $0 }, tag: "SHOW")
    }

    private func stats() async throws -> AdminResult {
        let totals: [(Int, Int, Int64, Int, Int, Int, Int, Int)] = try await self.runtime.gather { shard in
            (shard.queries, shard.transactions, shard.queryNanos, shard.bytesIn, shard.bytesOut, shard.errors, shard.rewrites, shard.cacheHits)
        }
        let queries = totals.reduce(0) { $0 + $1.0 }
        let transactions = totals.reduce(0) { $0 + $1.1 }
        let nanos = totals.reduce(Int64(0)) { $0 + $1.2 }
        let bytesIn = totals.reduce(0) { $0 + $1.3 }
        let bytesOut = totals.reduce(0) { $0 + $1.4 }
        let errors = totals.reduce(0) { $0 + $1.5 }
        let rewrites = totals.reduce(0) { $0 + $1.6 }
        let cacheHits = totals.reduce(0) { $0 + $1.7 }
        let uptime = max(1, (NIODeadline.now() - self.runtime.startedAt).nanoseconds / 1_000_000_000)
        let clients = self.runtime.clientCount.load(ordering: .relaxed)
        let average = queries > 0 ? nanos / Int64(queries) / 1000 : 0
        return .rows(
            columns: [
                "clients", "queries", "transactions", "errors", "bytes_received", "bytes_sent", "avg_query_us",
                "queries_per_second", "uptime_seconds", "rollup_rewrites", "cache_hits",
            ],
            rows: [
                [
                    "\(clients)", "\(queries)", "\(transactions)", "\(errors)", "\(bytesIn)", "\(bytesOut)", "\(average)",
                    "\(Int64(queries) / uptime)", "\(uptime)", "\(rewrites)", "\(cacheHits)",
                ]
            ], tag: "SHOW")
    }

    private func showConfig() -> AdminResult {
        let config = self.runtime.config
        var rows: [[String?]] = [
            ["listen.host", config.listen.host], ["listen.port", "\(config.listen.port)"],
            ["listen.max_client_connections", "\(config.listen.maxClientConnections)"],
            ["listen.tls", config.listen.tlsEnabled ? "on" : "off"],
            ["http.host", config.http.host], ["http.port", "\(config.http.port)"],
            ["limits.max_message_bytes", "\(config.limits.maxMessageBytes)"],
            ["limits.startup_timeout_ms", "\(config.limits.startupTimeoutMs)"],
            ["limits.idle_in_transaction_timeout_ms", "\(config.limits.idleInTransactionTimeoutMs)"],
            ["limits.client_buffer_bytes", "\(config.limits.clientBufferBytes)"],
            ["pool.mode", config.pool.mode.rawValue], ["pool.min_size", "\(config.pool.minSize)"],
            ["pool.max_size", "\(config.pool.maxSize)"], ["pool.connect_timeout_ms", "\(config.pool.connectTimeoutMs)"],
            ["pool.checkout_timeout_ms", "\(config.pool.checkoutTimeoutMs)"],
            ["pool.idle_timeout_ms", "\(config.pool.idleTimeoutMs)"],
            ["pool.server_lifetime_ms", "\(config.pool.serverLifetimeMs)"],
            ["pool.liveness_check_after_ms", "\(config.pool.livenessCheckAfterMs)"],
            ["pool.prepare_unnamed", config.pool.prepareUnnamed ? "true" : "false"],
            ["pool.max_prepared_per_server", "\(config.pool.maxPreparedPerServer)"],
            ["region", config.region],
            ["routing.read_your_writes", config.routing.readYourWrites.rawValue],
            ["routing.max_lag_ms", "\(config.routing.maxLagMs)"], ["routing.max_lag_bytes", "\(config.routing.maxLagBytes)"],
            ["routing.failover_wait_ms", "\(config.routing.failoverWaitMs)"],
            ["routing.retry_reads", config.routing.retryReads ? "true" : "false"],
            ["routing.safe_functions", config.routing.safeFunctions.joined(separator: ", ")],
            ["health.interval_ms", "\(config.health.intervalMs)"], ["health.timeout_ms", "\(config.health.timeoutMs)"],
            ["health.up_after", "\(config.health.upAfter)"], ["health.user", config.healthLogin?.user ?? ""],
            ["health.database", config.health.database],
            ["auth.method", config.authMethod.rawValue], ["threads", "\(config.threads)"],
            ["shutdown_timeout_ms", "\(config.shutdownTimeoutMs)"], ["log_level", config.logLevel],
        ]
        for node in config.nodes {
            rows.append(["regions.\(node.region).nodes.\(node.name)", "\(node.endpoint.host):\(node.endpoint.port)"])
        }
        for user in config.users.values.sorted(by: { $0.name < $1.name }) {
            rows.append(["users.\(user.name).admin", user.admin ? "true" : "false"])
        }
        rows += config.storageConfigRows
        rows += config.cacheConfigRows
        rows += config.batchConfigRows
        return .rows(columns: ["key", "value"], rows: rows, tag: "SHOW")
    }

    /// EXPLAIN REWRITE <sql>: what the multi-timeframe rewrite sends for that text.
    private func explainRewrite(_ command: String) -> AdminResult {
        // The statement is everything after the two words, as typed.
        var rest = Substring(command)
        for _ in 0..<2 {
            rest = rest.drop(while: { $0.isWhitespace })
            rest = rest.drop(while: { !$0.isWhitespace })
        }
        let sql = rest.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !sql.isEmpty else {
            return .error(ErrorFields(severity: "ERROR", sqlState: "42601", message: "EXPLAIN REWRITE needs a statement: EXPLAIN REWRITE SELECT …"))
        }
        guard let schema = self.runtime.config.rollupSchema else {
            return .rows(
                columns: ["rollup", "rewritten", "reason", "sql"],
                rows: [[nil, "no", "the rewrite is off (no relation has rewrite: true in the config)", sql]], tag: "EXPLAIN")
        }
        switch RollupRewriter.rewrite(sql, schema: schema) {
        case .rewritten(let text, let rollup):
            return .rows(columns: ["rollup", "rewritten", "reason", "sql"], rows: [[rollup, "yes", nil, text]], tag: "EXPLAIN")
        case .unchanged(let reason):
            return .rows(columns: ["rollup", "rewritten", "reason", "sql"], rows: [[nil, "no", reason, sql]], tag: "EXPLAIN")
        }
    }

    private func reload() async -> AdminResult {
        do {
            try await self.runtime.reload()
            return .command("RELOAD")
        } catch {
            return .error(ErrorFields(severity: "ERROR", sqlState: "F0000", message: "reload failed: \(error)"))
        }
    }

    private func pause() async throws -> AdminResult {
        _ = try await self.runtime.gather { $0.setPaused(true) }
        let deadline = ContinuousClock.now + .seconds(Double(self.runtime.config.shutdownTimeoutMs) / 1000)
        while ContinuousClock.now < deadline {
            let active = try await self.runtime.gather { $0.activeServers }.reduce(0, +)
            if active == 0 { return .command("PAUSE") }
            try await Task.sleep(for: .milliseconds(20))
        }
        return .error(
            ErrorFields(
                severity: "ERROR", sqlState: "57014",
                message: "PAUSE: server connections still in use after shutdown_timeout_ms; new work is held, RESUME to undo"))
    }
}
