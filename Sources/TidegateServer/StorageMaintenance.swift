import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PostgresWire

extension Runtime {
    /// Runs a query of Tidegate's own on the primary, through the first event loop's pool for
    /// (database, health login, primary) — as the function catalog is loaded. Errors are
    /// `TidegateError`s.
    func primaryQuery(database: String, _ sql: String) async throws -> [[String?]] {
        let config = self.config
        guard let login = config.healthLogin else {
            throw TidegateError.serverUnavailable("no user with a plain password to log in to the primary with (health.user)")
        }
        guard let primary = self.topology.primary ?? (config.routes ? nil : config.nodes.first?.name) else {
            throw TidegateError.serverUnavailable("no primary is known (SHOW NODES)")
        }
        guard let reference = self.shards.first else { throw TidegateError.serverUnavailable("not running") }
        return try await reference.loop.flatSubmit {
            let pool = reference.shard.value.pool(for: PoolKey(database: database, user: login.user, node: primary))
            return pool.checkout().flatMap { server in
                server.runInternalRows(sql).always { _ in pool.release(server) }
            }
        }.get()
    }
}

/// The maintenance job's own connection to the primary, outside the pools (like the health checker's
/// probes): the job never takes a client's pool slot, never waits behind PAUSE and does not show in
/// SHOW POOLS. Opened on first use, kept between runs, opened again when it broke or the primary moved.
final class JobConnection: Sendable {
    let runtime: Runtime
    let logger: Logger
    /// query() runs on the job's task, close() also from its cancellation handler: hence the lock. The
    /// ServerConnection itself is only touched on its event loop.
    private let currentBox = NIOLockedValueBox<(key: PoolKey, server: ServerConnection)?>(nil)

    init(runtime: Runtime, logger: Logger) {
        self.runtime = runtime
        self.logger = logger
    }

    func query(database: String, _ sql: String) async throws -> [[String?]] {
        let config = self.runtime.config
        guard let login = config.healthLogin else {
            throw TidegateError.serverUnavailable("no user with a plain password to log in to the primary with (health.user)")
        }
        guard let primary = self.runtime.topology.primary ?? (config.routes ? nil : config.nodes.first?.name),
            let node = config.node(named: primary)
        else {
            throw TidegateError.serverUnavailable("no primary is known (SHOW NODES)")
        }
        guard let loop = self.runtime.shards.first?.loop else { throw TidegateError.serverUnavailable("not running") }
        let key = PoolKey(database: database, user: login.user, node: primary)
        let server: ServerConnection
        if let current = self.currentBox.withLockedValue({ $0 }), current.key == key,
            !(try await loop.submit { current.server.isClosed }.get())
        {
            server = current.server
        } else {
            self.close()
            let logger = self.logger
            let maxMessageBytes = config.limits.maxMessageBytes
            server = try await loop.submit {
                ServerConnection(
                    key: key, node: node.endpoint, loop: loop, password: login.password, maxMessageBytes: maxMessageBytes,
                    logger: logger)
            }.get()
            self.currentBox.withLockedValue { $0 = (key, server) }
            do {
                try await loop.flatSubmit {
                    server.connect(connectTimeout: .milliseconds(Int64(config.pool.connectTimeoutMs)), maxMessageBytes: maxMessageBytes)
                }.get()
            } catch {
                self.close()
                throw error
            }
        }
        do {
            return try await loop.flatSubmit { server.runInternalRows(sql) }.get()
        } catch TidegateError.serverRefused(let fields) {
            throw TidegateError.serverRefused(fields)
        } catch {
            self.close()
            throw error
        }
    }

    /// Closes the connection (a query in flight fails at once).
    func close() {
        let current = self.currentBox.withLockedValue { box in
            defer { box = nil }
            return box
        }
        guard let (_, server) = current else { return }
        server.loop.execute { server.close() }
    }
}

/// The storage maintenance job of `tidegate serve`: every `storage.maintenance_interval_ms`, on the
/// primary's `storage.database` — plain PostgreSQL: creates the daily partitions ahead, drops those past
/// retention, refreshes the bars when their refresh interval has passed; both flavours: records relation
/// sizes into tidegate_storage_history every `storage.history_interval_ms`. A database without the
/// storage schema (migration 5) is skipped quietly. Failures are logged (one warning per 5 minutes, the
/// rest at debug) and never touch clients: the job has its own connection (`JobConnection`), no pool's.
final class StorageMaintenance: Sendable {
    let runtime: Runtime
    let logger: Logger

    init(runtime: Runtime, logger: Logger) {
        self.runtime = runtime
        var logger = logger
        logger[metadataKey: "tidegate.component"] = "storage"
        self.logger = logger
    }

    /// What the job remembers between runs.
    struct State {
        var lastHistory: ContinuousClock.Instant?
        var lastRefresh: ContinuousClock.Instant?
        var lastWarning: ContinuousClock.Instant?
        var suppressedWarnings = 0
        var schemaAbsentLogged = false
    }

    /// Runs until the task is cancelled (the service shutting down).
    func run() async {
        var state = State()
        let connection = JobConnection(runtime: self.runtime, logger: self.logger)
        defer { connection.close() }
        // Give the health checker a round to find the primary.
        try? await Task.sleep(for: .seconds(1))
        while !Task.isCancelled {
            let config = self.runtime.config
            let interval = config.storage.maintenanceIntervalMs
            if interval > 0 {
                // Shutdown must not wait for a long statement (a big refresh): cancelling closes the
                // connection, which fails the statement in flight.
                await withTaskCancellationHandler {
                    await self.runOnce(config: config, state: &state, connection: connection)
                } onCancel: {
                    connection.close()
                }
            }
            // Disabled: look again later (a reload may enable it).
            do {
                try await Task.sleep(for: .milliseconds(interval > 0 ? interval : 5_000))
            } catch {
                return
            }
        }
    }

    func runOnce(config: TidegateConfig, state: inout State, connection: JobConnection) async {
        let database = config.storage.database
        let query: StoragePolicies.Query = { sql in
            do {
                return try await connection.query(database: database, sql)
            } catch TidegateError.serverRefused(let fields) {
                throw StorageJobError(sqlState: fields.sqlState, message: fields.message ?? "error")
            }
        }
        let now = ContinuousClock.now
        // Each task on its own: one failing (a partition that cannot be created) does not stop the others.
        var failures: [String] = []
        do {
            guard let flavour = try await StoragePolicies.flavour(query) else {
                // Nothing to maintain: hold no connection until the next look.
                connection.close()
                if !state.schemaAbsentLogged {
                    state.schemaAbsentLogged = true
                    self.logger.debug("storage schema absent (migration 5 not applied); maintenance skipped", metadata: ["database": "\(database)"])
                }
                return
            }
            state.schemaAbsentLogged = false
            if flavour == .postgres {
                let observed = try await StoragePolicies.observe(query, flavour: flavour)
                let steps = StoragePlanner.plan(
                    relations: config.relations, storage: config.storage, observed: observed,
                    now: Int64(Date.now.timeIntervalSince1970)
                ).filter { $0.policy == .partitions || $0.policy == .retention }
                for step in steps where !step.inSync {
                    do {
                        for line in try await StoragePolicies.apply([step], query: query) {
                            self.logger.info("storage maintenance: \(line)", metadata: ["database": "\(database)"])
                        }
                    } catch {
                        failures.append("\(error)")
                    }
                }
                let refreshMs = StoragePlanner.rollupRefreshIntervalMs(config.relations) ?? config.storage.maintenanceIntervalMs
                if observed.relations.values.contains(.rollup),
                    state.lastRefresh.map({ now - $0 >= .milliseconds(refreshMs) }) ?? true
                {
                    do {
                        let refreshed = try await query("SELECT tidegate_refresh_bars()").first?.first ?? nil
                        state.lastRefresh = now
                        self.logger.debug("bars refreshed", metadata: ["database": "\(database)", "minutes": "\(refreshed ?? "0")"])
                    } catch {
                        failures.append("refreshing the bars: \(error)")
                    }
                }
            }
            if state.lastHistory.map({ now - $0 >= .milliseconds(config.storage.historyIntervalMs) }) ?? true {
                do {
                    let recorded = try await query("SELECT tidegate_record_storage()").first?.first ?? nil
                    state.lastHistory = now
                    self.logger.debug("storage sizes recorded", metadata: ["database": "\(database)", "rows": "\(recorded ?? "0")"])
                } catch {
                    failures.append("recording sizes: \(error)")
                }
            }
        } catch let error as StorageJobError where error.sqlState == "3D000" {
            // The database does not exist: nothing to maintain.
            connection.close()
            if !state.schemaAbsentLogged {
                state.schemaAbsentLogged = true
                self.logger.debug("storage database absent; maintenance skipped", metadata: ["database": "\(database)"])
            }
        } catch {
            failures.append("\(error)")
        }
        guard !failures.isEmpty else { return }
        let error = failures.joined(separator: "; ")
        if let last = state.lastWarning, now - last < .seconds(300) {
            state.suppressedWarnings += 1
            self.logger.debug("storage maintenance failed", metadata: ["database": "\(database)", "error": "\(error)"])
            return
        }
        state.lastWarning = now
        self.logger.warning(
            "storage maintenance failed; clients are not affected, the job tries again next interval",
            metadata: ["database": "\(database)", "error": "\(error)", "suppressed": "\(state.suppressedWarnings)"])
        state.suppressedWarnings = 0
    }
}

struct StorageJobError: Error, CustomStringConvertible {
    var sqlState: String?
    var message: String
    var description: String { "\(self.message) (SQLSTATE \(self.sqlState ?? "?"))" }
}
