import Cache
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PostgresWire
import Topology

/// Tidegate's view of the writes that bypass it: one logical replication connection (pgoutput) to the
/// current primary, whose commits to the tracked relations are handed to `apply` in commit order.
///
/// Each connection makes the publication match the tracked relations, creates a temporary slot, calls
/// `restarted` (what was committed before the slot existed was not seen, so the cache forgets
/// everything), then streams. The position reported to the server advances only once `apply` has
/// succeeded for a commit; an `apply` failure, a FATAL, a closed socket or a silent server ends the
/// connection, and the listener reconnects with backoff to whatever `primary()` names then (failover).
/// The temporary slot goes away with its connection, so nothing is left on the server.
///
/// Lives on one event loop; `lagMillis` and `status` may be read from anywhere.
// @unchecked Sendable: the mutable properties are touched only on `loop` (every entry point hops there);
// what other threads read sits in the locked `machine`.
final class ReplicationListener: @unchecked Sendable {
    struct Settings: Sendable, Equatable {
        var database = "market"
        var user = ""
        var password = ""
        var publication = "tidegate"
        var slotPrefix = "tidegate"
        var statusIntervalMs = 100
        var reconnectMinMs = 200
        var reconnectMaxMs = 5000
        var connectTimeoutMs = 5000
        /// A connection that hears nothing (no keepalive, although one is asked for every status
        /// interval) for this long is dropped.
        var silenceLimitMs = 10_000
        /// Commits decoded and waiting for `apply`; beyond it the connection is not read.
        var maxPendingCommits = 256
        var maxMessageBytes = 64 << 20
    }

    typealias Status = ReplicationStateMachine.Status

    let settings: Settings
    let relations: PgOutputDecoder.TrackedRelations
    let primary: @Sendable () -> TidegateConfig.Node?
    let loop: any EventLoop
    let logger: Logger
    private let applyCommit: @Sendable (ReplicationCommit) -> EventLoopFuture<Void>
    private let onRestart: @Sendable () -> EventLoopFuture<Void>
    private let machine: NIOLockedValueBox<ReplicationStateMachine>

    private var stopped = false
    /// Increases with every connection attempt and every end of one: callbacks of an older connection
    /// find a different number and do nothing.
    private var generation = 0
    private var server: ServerConnection?
    /// The node of `server`.
    private var node: TidegateConfig.Node?
    private var stream: ReplicationStream?
    private var statusTimer: RepeatedTask?
    private var reconnect: Scheduled<Void>?
    private var backoffMs: Int
    /// Since when the listener has been failing to stream (nil while streaming): one log line per incident.
    private var incidentSince: NIODeadline?
    /// Relations already reported missing or without a usable replica identity (not repeated per connection).
    private var reported = Set<String>()

    init(
        settings: Settings,
        relations: PgOutputDecoder.TrackedRelations,
        primary: @escaping @Sendable () -> TidegateConfig.Node?,
        eventLoop: any EventLoop,
        logger: Logger,
        apply: @escaping @Sendable (ReplicationCommit) -> EventLoopFuture<Void>,
        restarted: @escaping @Sendable () -> EventLoopFuture<Void>
    ) {
        self.settings = settings
        self.relations = relations
        self.primary = primary
        self.loop = eventLoop
        var logger = logger
        logger[metadataKey: "tidegate.component"] = "replication"
        self.logger = logger
        self.applyCommit = apply
        self.onRestart = restarted
        let interval = max(1, settings.statusIntervalMs)
        self.machine = NIOLockedValueBox(
            ReplicationStateMachine(
                relations: relations, maxPendingCommits: max(1, settings.maxPendingCommits),
                freshFor: .milliseconds(Int64(max(1_000, 5 * interval))),
                silenceLimit: .milliseconds(Int64(max(settings.silenceLimitMs, 3 * interval))), now: .now()))
        self.backoffMs = max(1, settings.reconnectMinMs)
    }

    /// 0 while caught up; otherwise the milliseconds since the listener last was (growing while it is
    /// disconnected).
    var lagMillis: Int64 {
        let now = NIODeadline.now()
        return self.machine.withLockedValue { $0.lagMillis(now: now) }
    }

    var status: Status { self.machine.withLockedValue { $0.status } }

    /// How far every commit's invalidations are applied (nil while not streaming).
    var appliedLSN: LSN? { self.machine.withLockedValue { $0.status.phase == .connected ? $0.status.appliedLSN : nil } }

    func start() {
        self.loop.execute { self.connect() }
    }

    /// Ends the connection (its temporary slot goes with it) and stops reconnecting. Succeeds once the
    /// socket is closed.
    func shutdown() -> EventLoopFuture<Void> {
        self.loop.flatSubmit {
            self.stopped = true
            self.generation += 1
            self.reconnect?.cancel()
            self.reconnect = nil
            let closed = self.closeConnection()
            self.machine.withLockedValue { $0.stopped() }
            return closed
        }
    }

    // MARK: Connecting

    private func connect() {
        guard !self.stopped else { return }
        self.generation += 1
        let generation = self.generation
        guard let node = self.primary() else {
            self.failed(generation, "no primary is known")
            return
        }
        let slot = Self.slotName(prefix: self.settings.slotPrefix)
        self.machine.withLockedValue { $0.connecting(node: "\(node.host):\(node.port)", slot: slot) }
        let server = ServerConnection(
            key: PoolKey(database: self.settings.database, user: self.settings.user, node: "replication"), node: node,
            loop: self.loop, password: self.settings.password.isEmpty ? nil : self.settings.password,
            maxMessageBytes: self.settings.maxMessageBytes, logger: self.logger,
            startupParameters: [
                ("replication", "database"),
                // Text timestamps in UTC ISO form, whatever the role's or database's settings say.
                ("options", "-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3"),
                ("application_name", "tidegate replication listener"),
            ])
        self.server = server
        self.node = node
        server.connect(
            connectTimeout: .milliseconds(Int64(self.settings.connectTimeoutMs)),
            maxMessageBytes: self.settings.maxMessageBytes
        ).flatMap {
            self.preparePublications(server)
        }.flatMap { publications in
            server.runInternalRows("CREATE_REPLICATION_SLOT \(slot) TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT")
                .flatMapThrowing { rows -> (LSN, [String]) in
                    guard let text = rows.first?.dropFirst().first ?? nil, let point = LSN(text) else {
                        throw TidegateError.serverUnavailable("unexpected answer to CREATE_REPLICATION_SLOT")
                    }
                    return (point, publications)
                }
        }.flatMap { slotAndPublications in
            // Changes committed before the slot's consistent point are not streamed: the cache forgets them.
            self.onRestart().hop(to: self.loop).map { slotAndPublications }
        }.whenComplete { result in
            guard generation == self.generation else {
                server.close()
                return
            }
            switch result {
            case .success(let (point, publications)):
                self.machine.withLockedValue { $0.slotReady(at: point) }
                self.startStreaming(server, slot: slot, publications: publications, generation: generation)
            case .failure(let error):
                self.failed(generation, Self.describe(error))
            }
        }
    }

    private func startStreaming(_ server: ServerConnection, slot: String, publications: [String], generation: Int) {
        let stream = ReplicationStream(listener: self, generation: generation)
        self.stream = stream
        server.attach(stream)
        // publication_names is a list of identifiers inside a string literal.
        let names = Self.quoteLiteral(publications.map { Self.quoteIdentifier($0) }.joined(separator: ","))
        var buffer = ByteBuffer()
        FrontendEncoder.query(
            &buffer, "START_REPLICATION SLOT \(slot) LOGICAL 0/0 (proto_version '1', publication_names \(names))")
        server.write(buffer)
        server.flush()
    }

    /// After `reconnectMinMs`, doubling per failed attempt up to `reconnectMaxMs`.
    private func scheduleReconnect() {
        guard !self.stopped else { return }
        let delay = self.backoffMs
        self.backoffMs = min(max(1, self.settings.reconnectMaxMs), delay * 2)
        self.reconnect = self.loop.scheduleTask(in: .milliseconds(Int64(delay))) { self.connect() }
    }

    /// Ends the current connection because of `reason` and reconnects. Logged once per incident (until
    /// the listener streams again).
    private func failed(_ generation: Int, _ reason: String) {
        guard generation == self.generation, !self.stopped else { return }
        self.generation += 1
        _ = self.closeConnection()
        self.machine.withLockedValue { $0.disconnected(error: reason) }
        if self.incidentSince == nil {
            self.incidentSince = .now()
            self.logger.warning(
                "replication listener is not streaming; reconnecting (cache freshness lags until it is back)",
                metadata: ["error": "\(reason)"])
        } else {
            self.logger.debug("replication listener: reconnect failed", metadata: ["error": "\(reason)"])
        }
        self.scheduleReconnect()
    }

    private func closeConnection() -> EventLoopFuture<Void> {
        self.statusTimer?.cancel()
        self.statusTimer = nil
        self.stream = nil
        guard let server = self.server else { return self.loop.makeSucceededVoidFuture() }
        self.server = nil
        let closed = server.channel?.closeFuture ?? self.loop.makeSucceededVoidFuture()
        server.close()
        return closed
    }

    // MARK: Streaming

    /// A server message of the connection `generation`, once START_REPLICATION was sent.
    fileprivate func received(_ frame: PostgresFrame, generation: Int) {
        guard generation == self.generation else { return }
        switch frame.backendID {
        case .copyData:
            let now = NIODeadline.now()
            let action = self.machine.withLockedValue { $0.copyData(frame, now: now) }
            self.run(action, generation: generation)
        case .copyBothResponse:
            self.machine.withLockedValue { $0.streamStarted(now: .now()) }
            if let since = self.incidentSince {
                self.logger.notice(
                    "replication listener is streaming again",
                    metadata: ["after_ms": "\((NIODeadline.now() - since).nanoseconds / 1_000_000)"])
                self.incidentSince = nil
            }
            self.backoffMs = max(1, self.settings.reconnectMinMs)
            let interval = TimeAmount.milliseconds(Int64(max(1, self.settings.statusIntervalMs)))
            self.statusTimer = self.loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) {
                [weak self] _ in
                guard let self else { return }
                // Failover: another node is primary now (nil is only a gap between probes, not a move).
                if let primary = self.primary(), primary != self.node {
                    self.failed(generation, "the primary is now \(primary.host):\(primary.port)")
                    return
                }
                let now = NIODeadline.now()
                let action = self.machine.withLockedValue { $0.statusTick(now: now) }
                self.run(action, generation: generation)
            }
        case .errorResponse:
            let fields =
                (try? BackendMessage.errorFields(frame))
                ?? ErrorFields(severity: "ERROR", sqlState: "XX000", message: "unreadable error")
            self.failed(generation, Self.describe(fields))
        case .copyDone:
            self.failed(generation, "the server ended the replication stream")
        case .noticeResponse:
            let fields = try? BackendMessage.errorFields(frame)
            self.logger.debug("replication notice", metadata: ["message": "\(fields?.message ?? "?")"])
        default:
            // ParameterStatus, and CommandComplete/ReadyForQuery after a stream ends.
            break
        }
    }

    fileprivate func closed(generation: Int) {
        self.failed(generation, "the server closed the connection")
    }

    private func run(_ action: ReplicationStateMachine.Action, generation: Int) {
        switch action {
        case .none:
            break
        case .apply(let commit):
            self.applyCommit(commit).hop(to: self.loop).whenComplete { result in
                guard generation == self.generation else { return }
                let next: ReplicationStateMachine.Action
                switch result {
                case .success: next = self.machine.withLockedValue { $0.applySucceeded() }
                case .failure(let error): next = self.machine.withLockedValue { $0.applyFailed("\(error)") }
                }
                self.run(next, generation: generation)
            }
        case .sendStatus(let position, let replyRequested):
            var buffer = ByteBuffer()
            FrontendEncoder.standbyStatusUpdate(
                &buffer, written: position.value, flushed: position.value, applied: position.value,
                clock: Self.postgresClock(), replyRequested: replyRequested)
            self.server?.write(buffer)
            self.server?.flush()
        case .fail(let reason):
            self.failed(generation, reason)
            return
        }
        if let server = self.server {
            server.setAutoRead(self.machine.withLockedValue { $0.wantsReading })
        }
    }

    // MARK: The publication

    /// Makes the publication(s) publish exactly the tracked relations that exist, and returns the names to
    /// stream from. A relation whose leaf tables all have a replica identity goes into `publication`
    /// (inserts, updates, deletes, truncates). One without (no primary key and no REPLICA IDENTITY
    /// FULL/USING INDEX) goes into `<publication>_inserts` (inserts and truncates only): publishing its
    /// updates and deletes would make PostgreSQL refuse them, so they are not seen.
    private func preparePublications(_ server: ServerConnection) -> EventLoopFuture<[String]> {
        guard !self.relations.isEmpty else {
            return self.ensurePublication(server, self.settings.publication, tables: [], insertsOnly: false).map {
                [self.settings.publication]
            }
        }
        return server.runInternalRows(Self.relationsQuery(self.relations)).flatMap { rows in
            var full: [String] = []
            var insertsOnly: [String] = []
            for row in rows where row.count == 5 {
                let name = row[0] ?? "?"
                guard let regclass = row[1], let kind = row[2] else {
                    self.reportOnce(name, "tracked relation \(name) does not exist; the replication listener skips it")
                    continue
                }
                guard kind == "r" || kind == "p" else {
                    self.reportOnce(name, "tracked relation \(name) is not a table (relkind \(kind)); skipped")
                    continue
                }
                if row[3] == "f" {
                    insertsOnly.append(regclass)
                    self.reportOnce(
                        name,
                        """
                        \(name) has no replica identity: updates and deletes that bypass Tidegate are not seen \
                        (give it a primary key on its time and instrument columns, or REPLICA IDENTITY FULL)
                        """)
                } else {
                    full.append(regclass)
                    if row[4] == "f" {
                        self.reportOnce(
                            name,
                            """
                            the replica identity of \(name) lacks its time or instrument column: its updates and \
                            deletes that bypass Tidegate invalidate it as a whole
                            """)
                    }
                }
            }
            let main = self.settings.publication
            var steps = self.ensurePublication(server, main, tables: full, insertsOnly: false)
            guard !insertsOnly.isEmpty else { return steps.map { [main] } }
            let inserts = main + "_inserts"
            let tables = insertsOnly
            steps = steps.flatMap { self.ensurePublication(server, inserts, tables: tables, insertsOnly: true) }
            return steps.map { [main, inserts] }
        }
    }

    private func reportOnce(_ relation: String, _ message: String) {
        guard self.reported.insert(relation).inserted else { return }
        self.logger.warning("\(message)", metadata: ["relation": "\(relation)"])
    }

    /// Creates the publication, or alters it when its tables or options differ (an equal one is left
    /// alone, so a publication a DBA made for a role that does not own the tables works too).
    private func ensurePublication(
        _ server: ServerConnection, _ name: String, tables: [String], insertsOnly: Bool
    ) -> EventLoopFuture<Void> {
        let publish = insertsOnly ? "insert, truncate" : "insert, update, delete, truncate"
        let options = "publish = \(Self.quoteLiteral(publish)), publish_via_partition_root = true"
        let quoted = Self.quoteIdentifier(name)
        let desired = tables.sorted()
        let query = """
            SELECT p.pubinsert AND p.pubupdate = \(!insertsOnly) AND p.pubdelete = \(!insertsOnly) AND p.pubtruncate \
            AND p.pubviaroot, \
            (SELECT pg_catalog.string_agg(t.name, ',') \
            FROM (SELECT r.prrelid::pg_catalog.regclass::text AS name \
            FROM pg_catalog.pg_publication_rel r WHERE r.prpubid = p.oid) t) \
            FROM pg_catalog.pg_publication p WHERE p.pubname = \(Self.quoteLiteral(name))
            """
        return server.runInternalRows(query).flatMap { rows in
            var statements: [String] = []
            if let row = rows.first, row.count == 2 {
                let current = (row[1] ?? "").split(separator: ",").map(String.init)
                if row[0] != "t" { statements.append("ALTER PUBLICATION \(quoted) SET (\(options))") }
                if Set(current) != Set(desired) {
                    if !desired.isEmpty {
                        statements.append("ALTER PUBLICATION \(quoted) SET TABLE \(desired.joined(separator: ", "))")
                    } else {
                        statements.append("ALTER PUBLICATION \(quoted) DROP TABLE \(current.joined(separator: ", "))")
                    }
                }
            } else if desired.isEmpty {
                statements.append("CREATE PUBLICATION \(quoted) WITH (\(options))")
            } else {
                statements.append(
                    "CREATE PUBLICATION \(quoted) FOR TABLE \(desired.joined(separator: ", ")) WITH (\(options))")
            }
            if !statements.isEmpty {
                self.logger.info("replication listener updates its publication", metadata: ["publication": "\(name)"])
            }
            return statements.reduce(self.loop.makeSucceededVoidFuture()) { previous, statement in
                previous.flatMap { server.runInternal(statement) }
            }
        }
    }

    /// Per tracked relation: its name, its regclass (NULL when it does not exist), relkind, whether every
    /// leaf table has a replica identity, and whether every leaf's identity holds the time and
    /// instrument columns (FULL holds everything). The leaves of a plain table are itself
    /// (pg_partition_tree has no rows for it).
    static func relationsQuery(_ relations: PgOutputDecoder.TrackedRelations) -> String {
        let values = relations.sorted { $0.key < $1.key }.map { name, columns in
            "(\(quoteLiteral(name)), \(quoteLiteral(columns.timeColumn)), \(quoteLiteral(columns.instrumentColumn)))"
        }
        return """
            SELECT v.name, c.oid::pg_catalog.regclass::text, c.relkind, COALESCE(i.has_identity, true), \
            COALESCE(i.covers, true) \
            FROM (VALUES \(values.joined(separator: ", "))) AS v(name, time_column, instrument_column) \
            LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(pg_catalog.quote_ident(v.name)) \
            LEFT JOIN LATERAL (SELECT \
            pg_catalog.bool_and(l.relreplident = 'f' OR x.indkey IS NOT NULL) AS has_identity, \
            pg_catalog.bool_and(l.relreplident = 'f' OR (ta.attnum = ANY (x.indkey::pg_catalog.int2[]) \
            AND ia.attnum = ANY (x.indkey::pg_catalog.int2[]))) AS covers \
            FROM (SELECT t.relid FROM pg_catalog.pg_partition_tree(c.oid) t WHERE t.isleaf \
            UNION SELECT c.oid WHERE c.relkind = 'r') t \
            JOIN pg_catalog.pg_class l ON l.oid = t.relid \
            LEFT JOIN pg_catalog.pg_index x ON x.indrelid = l.oid AND CASE l.relreplident \
            WHEN 'd' THEN x.indisprimary WHEN 'i' THEN x.indisreplident ELSE false END \
            LEFT JOIN pg_catalog.pg_attribute ta ON ta.attrelid = l.oid AND ta.attname = v.time_column \
            AND NOT ta.attisdropped \
            LEFT JOIN pg_catalog.pg_attribute ia ON ia.attrelid = l.oid AND ia.attname = v.instrument_column \
            AND NOT ia.attisdropped \
            ) i ON true \
            ORDER BY v.name
            """
    }

    // MARK: Helpers

    /// `<prefix>_<16 hex digits>`: a slot name is lower-case letters, digits and underscores, at most 63.
    static func slotName(prefix: String) -> String {
        let cleaned = String(
            prefix.lowercased().unicodeScalars.map { scalar -> Character in
                ("a"..."z").contains(scalar) || ("0"..."9").contains(scalar) ? Character(scalar) : "_"
            }.prefix(40))
        let suffix = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        return "\(cleaned.isEmpty ? "tidegate" : cleaned)_\(String(repeating: "0", count: 16 - suffix.count))\(suffix)"
    }

    static func quoteIdentifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    static func quoteLiteral(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "''") + "'"
    }

    /// Now in microseconds since 2000-01-01, the clock field of a standby status update.
    static func postgresClock() -> Int64 {
        Int64(Date.now.timeIntervalSince1970 * 1_000_000) - TimestampText.postgresEpochMicros
    }

    static func describe(_ fields: ErrorFields) -> String {
        "\(fields.severity ?? "ERROR") \(fields.sqlState ?? "?"): \(fields.message ?? "?")"
    }

    static func describe(_ error: any Error) -> String {
        if case TidegateError.serverRefused(let fields) = error { return Self.describe(fields) }
        return "\(error)"
    }
}

/// Receives the server messages of one streaming connection for the listener.
// @unchecked Sendable: used on the listener's event loop only.
final class ReplicationStream: ServerConnectionOwner, @unchecked Sendable {
    private weak var listener: ReplicationListener?
    let generation: Int

    init(listener: ReplicationListener, generation: Int) {
        self.listener = listener
        self.generation = generation
    }

    func serverFrame(_ frame: PostgresFrame, in buffer: ByteBuffer, at offset: Int, from server: ServerConnection) {
        self.listener?.received(frame, generation: self.generation)
    }

    func serverClosed(_ server: ServerConnection) {
        self.listener?.closed(generation: self.generation)
    }

    func serverBufferDone(_ server: ServerConnection) {}
    func serverReadComplete(_ server: ServerConnection) {}
    func serverWritabilityChanged(_ server: ServerConnection, writable: Bool) {}
}
