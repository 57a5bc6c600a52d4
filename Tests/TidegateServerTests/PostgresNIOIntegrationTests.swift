import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import PostgresWire
import Testing

@testable import TidegateServer

/// Real client (postgres-nio) → in-process Tidegate → lab PostgreSQL.
@Suite(
    .serialized,
    .enabled(if: labIsUp(), Lab.skipReason),
    .timeLimit(.minutes(2))
)
struct PostgresNIOIntegrationTests {
    static func configuration(port: Int, database: String = Lab.database) -> PostgresConnection.Configuration {
        var configuration = PostgresConnection.Configuration(
            host: "127.0.0.1",
            port: port,
            username: Lab.user,
            password: Lab.password,
            database: database,
            tls: .disable
        )
        configuration.options.connectTimeout = .seconds(5)
        return configuration
    }

    static func connect(port: Int, database: String = Lab.database, id: Int = 1) async throws -> PostgresConnection {
        try await PostgresConnection.connect(
            configuration: Self.configuration(port: port, database: database),
            id: id,
            logger: Lab.quietLogger
        )
    }

    /// Runs `body` with a connection and always closes it (postgres-nio asserts that connections are closed
    /// before they are released).
    @discardableResult
    static func withConnection<T: Sendable>(
        port: Int,
        database: String = Lab.database,
        id: Int = 1,
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let connection = try await Self.connect(port: port, database: database, id: id)
        do {
            let value = try await body(connection)
            try await connection.close()
            return value
        } catch {
            try? await connection.close()
            throw error
        }
    }

    /// Starts Tidegate, runs `body` with its port under a deadline, then stops it and checks that it stopped.
    static func withTidegate(
        _ what: String,
        within limit: Duration = .seconds(60),
        _ body: @escaping @Sendable (Int) async throws -> Void
    ) async throws {
        let tidegate = try await TidegateUnderTest.start()
        let result: Result<Void, any Error>
        do {
            try await withTimeout(limit, what) { try await body(tidegate.port) }
            result = .success(())
        } catch {
            result = .failure(error)
        }
        let stopped = await tidegate.stop()
        #expect(stopped, "Tidegate did not shut down within 10 s of a graceful shutdown")
        try result.get()
    }

    @Test func simpleSelectWithBinds() async throws {
        try await Self.withTidegate("simple select") { port in
            try await Self.withConnection(port: port) { connection in
                let symbol = "TIDE;'\"ü"
                let rows = try await connection.query(
                    "SELECT \(Int32(40))::int4 + \(Int32(2))::int4 AS sum, \(symbol)::text AS symbol, \(Optional<String>.none)::text AS nothing",
                    logger: Lab.quietLogger
                )
                var seen = 0
                for try await (sum, echoed, nothing) in rows.decode((Int32, String, String?).self) {
                    #expect(sum == 42)
                    #expect(echoed == symbol)
                    #expect(nothing == nil)
                    seen += 1
                }
                #expect(seen == 1)
            }
        }
    }

    struct AddOne: PostgresPreparedStatement {
        static let sql = "SELECT $1::int8 + 1, $2::text"
        typealias Row = (Int64, String)
        var value: Int64
        var label: String

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings()
            bindings.append(self.value)
            bindings.append(self.label)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    @Test func preparedStatementReusedFiftyTimes() async throws {
        try await Self.withTidegate("prepared statement") { port in
            try await Self.withConnection(port: port) { connection in
                for index in 0..<50 {
                    var results: [(Int64, String)] = []
                    for try await row in try await connection.execute(
                        AddOne(value: Int64(index) * 1_000, label: "n\(index)"),
                        logger: Lab.quietLogger
                    ) {
                        results.append(row)
                    }
                    #expect(results.count == 1)
                    #expect(results.first?.0 == Int64(index) * 1_000 + 1)
                    #expect(results.first?.1 == "n\(index)")
                }
            }
        }
    }

    @Test func sixteenConcurrentConnections() async throws {
        try await Self.withTidegate("concurrent connections") { port in
            try await withThrowingTaskGroup(of: Int.self) { group in
                for client in 0..<16 {
                    group.addTask {
                        try await Self.withConnection(port: port, id: client + 1) { connection in
                            var checked = 0
                            for query in 0..<20 {
                                let rows = try await connection.query(
                                    "SELECT \(Int32(client))::int4, \(Int32(query))::int4, \("c\(client)q\(query)")::text, pg_backend_pid()",
                                    logger: Lab.quietLogger
                                )
                                for try await (c, q, tag, pid) in rows.decode((Int32, Int32, String, Int32).self) {
                                    #expect(c == Int32(client))
                                    #expect(q == Int32(query))
                                    #expect(tag == "c\(client)q\(query)")
                                    #expect(pid > 0)
                                    checked += 1
                                }
                            }
                            return checked
                        }
                    }
                }
                var total = 0
                for try await checked in group { total += checked }
                #expect(total == 16 * 20)
            }
        }
    }

    @Test func errorThenWorkingQuery() async throws {
        try await Self.withTidegate("error then query") { port in
            try await Self.withConnection(port: port) { connection in
                do {
                    try await connection.query("SELECT 1 / \(Int32(0))::int4", logger: Lab.quietLogger)
                    Issue.record("division by zero must fail")
                } catch let error as PSQLError {
                    #expect(error.code == .server)
                    #expect(error.serverInfo?[.sqlState] == "22012")
                    #expect(error.serverInfo?[.message] == "division by zero")
                }
                let rows = try await connection.query("SELECT \(Int32(7))::int4 * 6", logger: Lab.quietLogger)
                var values: [Int32] = []
                for try await value in rows.decode(Int32.self) { values.append(value) }
                #expect(values == [42])
            }
        }
    }

    @Test func wrongPasswordIsRejectedWith28P01() async throws {
        try await Self.withTidegate("wrong password") { port in
            var configuration = Self.configuration(port: port)
            configuration.password = "wrong"
            do {
                let connection = try await PostgresConnection.connect(
                    configuration: configuration,
                    id: 1,
                    logger: Lab.quietLogger
                )
                try? await connection.close()
                Issue.record("login with a wrong password must fail")
            } catch let error as PSQLError {
                #expect(error.serverInfo?[.sqlState] == "28P01")
                #expect(error.serverInfo?[.severity] == "FATAL")
            }
        }
    }

    /// The admin console through the simple query protocol (as psql uses it).
    @Test func adminShowPoolsWithSimpleQuery() async throws {
        try await Self.withTidegate("admin console") { port in
            // Make a pool exist first.
            try await Self.withConnection(port: port) { connection in
                try await connection.query("SELECT 1", logger: Lab.quietLogger)
            }

            let frames = try await RawClient.simpleQuery(
                port: port,
                database: TidegateConfig.adminDatabase,
                sql: "SHOW POOLS"
            )
            #expect(frames.last?.backendID == .readyForQuery)
            #expect(!frames.contains { $0.backendID == .errorResponse })
            let columns = RawClient.columns(frames)
            #expect(columns.prefix(3) == ["database", "user", "node"])
            let rows = RawClient.rows(frames)
            #expect(rows.count >= 1)
            #expect(
                rows.contains { $0.first == Lab.database && $0.count > 2 && $0[1] == Lab.user && $0[2] == "primary" }
            )
        }
    }

    /// The same through the simple protocol for ordinary SQL: several statements in one Query.
    @Test func simpleProtocolMultiStatement() async throws {
        try await Self.withTidegate("simple protocol") { port in
            let frames = try await RawClient.simpleQuery(
                port: port,
                database: Lab.database,
                sql: "SELECT 1 AS a; SELECT 'x;y' AS b, NULL AS c"
            )
            #expect(RawClient.rows(frames) == [["1"], ["x;y", nil]])
            #expect(frames.filter { $0.backendID == .commandComplete }.count == 2)
            #expect(try BackendMessage.readyForQuery(try #require(frames.last)) == .idle)
        }
    }
}
