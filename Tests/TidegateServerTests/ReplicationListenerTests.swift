import Cache
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PostgresWire
import Testing
import Topology

@testable import TidegateServer

/// The listener against the lab primary: a scratch database with a partitioned `ticks`, writes made
/// directly on PostgreSQL (bypassing Tidegate), and a walsender killed under it.
@Suite(.serialized, .enabled(if: labIsUp(), Lab.skipReason), .timeLimit(.minutes(2)))
struct ReplicationListenerTests {
    static let database = "tg_listener_test"

    /// What the listener handed over, collected from its callbacks.
    final class Recorder: Sendable {
        let commits = NIOLockedValueBox<[ReplicationCommit]>([])
        let restarts = NIOLockedValueBox(0)
    }

    /// Runs `sql` (simple protocol) and fails on an ErrorResponse; the rows as text.
    @discardableResult
    static func run(
        _ sql: String, user: String = Lab.user, password: String = Lab.password, database: String
    )
        async throws -> [[String?]]
    {
        let frames = try await RawClient.simpleQuery(
            port: Lab.primaryPort, user: user, password: password, database: database, sql: sql)
        if let error = frames.first(where: { $0.backendID == .errorResponse }) {
            throw RawClient.ServerError(fields: try BackendMessage.errorFields(error))
        }
        return RawClient.rows(frames)
    }

    static func asPostgres(_ sql: String, database: String = "postgres") async throws -> [[String?]] {
        try await Self.run(sql, user: "postgres", password: "postgres", database: database)
    }

    /// Polls `condition` every 20 ms for at most `limit`.
    static func eventually(
        _ limit: Duration, _ what: String, _ condition: () async throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestTimeout(what: what)
    }

    static func micros(_ text: String) -> Int64 { TimestampText.micros(text)!.micros }

    /// A listener on the lab primary for `database` whose callbacks record into `recorder`; `apply` may
    /// fail a commit instead.
    static func listener(
        database: String, relations: PgOutputDecoder.TrackedRelations, recorder: Recorder,
        fail: @escaping @Sendable () -> Bool = { false }
    ) -> ReplicationListener {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        var settings = ReplicationListener.Settings()
        settings.database = database
        settings.user = Lab.user
        settings.password = Lab.password
        settings.publication = database
        settings.slotPrefix = database
        settings.reconnectMinMs = 50
        return ReplicationListener(
            settings: settings, relations: relations,
            primary: { TidegateConfig.Node(host: Lab.host, port: Lab.primaryPort) },
            eventLoop: loop, logger: Lab.quietLogger,
            apply: { commit in
                if fail() { return loop.makeFailedFuture(TidegateError.serverUnavailable("cache unavailable")) }
                recorder.commits.withLockedValue { $0.append(commit) }
                return loop.makeSucceededVoidFuture()
            },
            restarted: {
                recorder.restarts.withLockedValue { $0 += 1 }
                return loop.makeSucceededVoidFuture()
            })
    }

    /// Creates `database` (owned by tidegate) with `schema`, runs `body` with a started listener tracking
    /// `relations`, then stops the listener and drops the database, also when `body` fails.
    static func withListener(
        database: String, schema: String, relations: PgOutputDecoder.TrackedRelations,
        fail: @escaping @Sendable () -> Bool = { false },
        _ body: (ReplicationListener, Recorder) async throws -> Void
    ) async throws {
        _ = try await Self.asPostgres("DROP DATABASE IF EXISTS \(database) WITH (FORCE)")
        _ = try await Self.asPostgres("CREATE DATABASE \(database) OWNER \(Lab.user)")
        let recorder = Recorder()
        let listener = Self.listener(database: database, relations: relations, recorder: recorder, fail: fail)
        let result: Result<Void, any Error>
        do {
            try await Self.run(schema, database: database)
            listener.start()
            try await Self.eventually(.seconds(20), "the listener streams") { listener.status.phase == .connected }
            try await body(listener, recorder)
            result = .success(())
        } catch {
            result = .failure(error)
        }
        try? await listener.shutdown().get()
        // The temporary slot goes when its walsender exits, a moment after the socket closes; DROP DATABASE
        // refuses while the database has a slot.
        try? await Self.eventually(.seconds(5), "the listener's slot is gone") {
            try await Self.asPostgres("SELECT count(*) FROM pg_replication_slots WHERE database = '\(database)'")
                == [["0"]]
        }
        _ = try await Self.asPostgres("DROP DATABASE IF EXISTS \(database) WITH (FORCE)")
        try result.get()
    }

    @Test func seesWritesThatBypassTidegateAndFollowsReconnects() async throws {
        let schema = """
            CREATE TABLE ticks (ts timestamptz NOT NULL, symbol text NOT NULL, price numeric NOT NULL,
              PRIMARY KEY (symbol, ts)) PARTITION BY RANGE (ts);
            CREATE TABLE ticks_2024_01 PARTITION OF ticks FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
            CREATE TABLE ticks_default PARTITION OF ticks DEFAULT;
            CREATE TABLE quotes (ts timestamptz, symbol text, bid numeric);
            """
        try await Self.withListener(
            database: Self.database, schema: schema,
            relations: ["ticks": ("ts", "symbol"), "quotes": ("ts", "symbol"), "absent": ("ts", "symbol")]
        ) { listener, recorder in
            #expect(recorder.restarts.withLockedValue { $0 } == 1)
            // quotes has no replica identity: it is published for inserts and truncates only, so updates of
            // it still work.
            let publications = try await Self.run(
                "SELECT pubname, tablename FROM pg_publication_tables ORDER BY 1, 2", database: Self.database)
            #expect(publications == [["tg_listener_test", "ticks"], ["tg_listener_test_inserts", "quotes"]])
            try await Self.run("UPDATE quotes SET bid = 1", database: Self.database)

            try await Self.run(
                """
                BEGIN;
                INSERT INTO ticks VALUES ('2024-01-02 03:04:05.123456+00', 'AAPL', 187.5),
                  ('2024-01-02 03:04:06+00', 'MSFT', 370.25);
                INSERT INTO ticks VALUES ('2024-03-01 00:00:00+00', 'AAPL', 180);
                COMMIT;
                """, database: Self.database)
            try await Self.run(
                "UPDATE ticks SET ts = '2024-01-02 03:05:00+00' WHERE symbol = 'MSFT'", database: Self.database)
            try await Self.run("DELETE FROM ticks WHERE ts = '2024-03-01'", database: Self.database)
            try await Self.run("TRUNCATE ticks", database: Self.database)
            try await Self.eventually(.seconds(10), "four commits") {
                recorder.commits.withLockedValue { $0.count } >= 4
            }
            let idleSince = ContinuousClock.now
            let commits = recorder.commits.withLockedValue { $0 }
            #expect(commits.count == 4)
            guard commits.count == 4 else { return }
            func tick(_ text: String, _ symbol: String) -> ChangedRow {
                ChangedRow(relation: "ticks", instant: Self.micros(text), instrument: symbol)
            }
            #expect(
                Set(commits[0].rows) == [
                    tick("2024-01-02 03:04:05.123456Z", "AAPL"), tick("2024-01-02 03:04:06Z", "MSFT"),
                    tick("2024-03-01", "AAPL"),
                ])
            #expect(commits[0].rows.count == 3)
            #expect(
                Set(commits[1].rows) == [tick("2024-01-02 03:05:00Z", "MSFT"), tick("2024-01-02 03:04:06Z", "MSFT")])
            #expect(commits[2].rows == [tick("2024-03-01", "AAPL")])
            #expect(commits[3].rows == [])
            #expect(commits.map(\.wholeRelations) == [[], [], [], ["ticks"]])
            for (earlier, later) in zip(commits, commits.dropFirst()) {
                #expect(earlier.endLSN <= later.commitLSN)
                #expect(earlier.commitTime <= later.commitTime)
            }
            for commit in commits { #expect(commit.commitLSN < commit.endLSN) }

            // Caught up again within a second of the last commit.
            try await Self.eventually(.seconds(1), "lag back to 0") { listener.lagMillis == 0 }
            #expect(ContinuousClock.now - idleSince < .seconds(1))
            let status = listener.status
            #expect(status.commits >= 4)
            #expect(status.rows >= 6)
            #expect(status.lastCommitLSN == commits[3].endLSN)
            #expect((status.appliedLSN ?? LSN(0)) >= commits[3].endLSN)

            // Kill the walsender: the listener reconnects with a new slot and tells the cache to start over.
            let oldSlot = try #require(status.slot)
            let killed = try await Self.asPostgres(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '\(oldSlot)'")
            #expect(killed == [["t"]])
            try await Self.eventually(.seconds(10), "a new connection") {
                listener.status.phase == .connected && listener.status.slot != oldSlot
            }
            #expect(recorder.restarts.withLockedValue { $0 } == 2)
            #expect(listener.status.errors >= 1)
            #expect(listener.status.lastError?.contains("57P01") == true)
            try await Self.eventually(.seconds(5), "the old temporary slot is gone") {
                try await Self.asPostgres("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '\(oldSlot)'")
                    == [["0"]]
            }
            try await Self.run("INSERT INTO ticks VALUES ('2024-01-05 00:00:00+00', 'IBM', 1)", database: Self.database)
            try await Self.eventually(.seconds(10), "the commit after the reconnect") {
                recorder.commits.withLockedValue { $0.count } == 5
            }
            #expect(recorder.commits.withLockedValue { $0.last?.rows } == [tick("2024-01-05", "IBM")])
            try await Self.eventually(.seconds(1), "lag back to 0 after the reconnect") { listener.lagMillis == 0 }

            let slot = listener.status.slot ?? "?"
            try await listener.shutdown().get()
            #expect(listener.status.phase == .stopped)
            try await Self.eventually(.seconds(5), "the slot goes with the connection") {
                try await Self.asPostgres("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '\(slot)'")
                    == [["0"]]
            }
        }
    }

    /// A failing `apply` does not advance the position: the listener drops the connection, and the next one
    /// starts with `restarted` again.
    @Test func failedApplyReconnects() async throws {
        let failures = NIOLockedValueBox(1)
        try await Self.withListener(
            database: "\(Self.database)_apply",
            schema: "CREATE TABLE ticks (ts timestamptz, symbol text, PRIMARY KEY (symbol, ts))",
            relations: ["ticks": ("ts", "symbol")],
            fail: {
                failures.withLockedValue { count in
                    defer { count -= 1 }
                    return count > 0
                }
            }
        ) { listener, recorder in
            let database = "\(Self.database)_apply"
            try await Self.run("INSERT INTO ticks VALUES ('2024-01-02 00:00:00+00', 'AAPL')", database: database)
            try await Self.eventually(.seconds(10), "a reconnect after the failed apply") {
                recorder.restarts.withLockedValue { $0 } == 2 && listener.status.phase == .connected
            }
            #expect(listener.status.lastError?.contains("cache unavailable") == true)
            // The failed commit is not replayed (the new slot starts after it; restarted() covered it).
            try await Self.run("INSERT INTO ticks VALUES ('2024-01-03 00:00:00+00', 'MSFT')", database: database)
            try await Self.eventually(.seconds(10), "the next commit") {
                recorder.commits.withLockedValue { $0.count } == 1
            }
            #expect(
                recorder.commits.withLockedValue { $0.first?.rows }
                    == [ChangedRow(relation: "ticks", instant: Self.micros("2024-01-03"), instrument: "MSFT")])
        }
    }
}
