import Foundation
import LoadtestCore
import NIOCore
import NIOPosix
import PostgresWire

/// Before any run: every target reachable and logged in, with the scenario's tables, and every
/// statement of the scenario accepted; then the data the statements draw from.
struct Preflight {
    let scenario: ScenarioName
    let group: any EventLoopGroup

    /// A connection to the target, or the message that names it and why not.
    private func connect(name: String, spec: ConnectionSpec) async -> Result<PGConnection, UsageFailure> {
        do {
            return .success(try await PGConnection.connect(spec, on: self.group.next()).get())
        } catch {
            return .failure(UsageFailure(description: "target \(name) (\(spec.endpoint)): \(error)"))
        }
    }

    /// A message naming the target and what to do, or nil when it is ready.
    func check(name: String, spec: ConnectionSpec) async -> String? {
        let connection: PGConnection
        switch await self.connect(name: name, spec: spec) {
        case .success(let opened): connection = opened
        case .failure(let problem): return problem.description
        }
        defer { connection.close() }
        let list = self.scenario.requiredTables.map { "'\($0)'" }.joined(separator: ", ")
        guard let reply = try? await connection.query("SELECT t FROM unnest(ARRAY[\(list)]) AS t WHERE to_regclass(t) IS NULL").get() else {
            return "target \(name) (\(spec.endpoint)): the connection was lost while checking tables"
        }
        if let error = reply.error {
            return "target \(name) (\(spec.endpoint)): checking tables failed: \(error.message ?? "") (SQLSTATE \(error.sqlState ?? "?"))"
        }
        let missing = reply.values.compactMap { $0.first ?? nil }
        guard missing.isEmpty else {
            return "target \(name) (\(spec.endpoint)): \(self.scenario.rawValue) needs table(s) \(missing.joined(separator: ", ")) in database \(spec.database), which it lacks; run: \(self.scenario.preparation)"
        }
        return nil
    }

    /// The symbols (most active first) and trading days of the data, or pgbench's scale.
    func context(spec: ConnectionSpec, name: String) async throws -> (MarketContext, Int) {
        let connection = try await PGConnection.connect(spec, on: self.group.next()).get()
        defer { connection.close() }
        func rows(_ sql: String) async throws -> [[String?]] {
            let reply = try await connection.query(sql).get()
            if let error = reply.error {
                throw UsageFailure(description: "target \(name): reading the data failed: \(error.message ?? "") (SQLSTATE \(error.sqlState ?? "?"))")
            }
            return reply.values
        }
        switch self.scenario {
        case .passthrough:
            let count = try await rows("SELECT count(*) FROM pgbench_branches").first?.first.flatMap { $0 }.flatMap { Int($0) } ?? 0
            guard count > 0 else {
                throw UsageFailure(description: "target \(name): pgbench_branches is empty; run: \(self.scenario.preparation)")
            }
            return (MarketContext(symbols: [], days: []), count)
        case .apiReads, .ingest, .mixed:
            let symbols = try await rows("SELECT symbol FROM ticks GROUP BY symbol ORDER BY count(*) DESC, symbol").compactMap { $0.first ?? nil }
            let today = APIReadsWorkload.timestamp(Int64(Date().timeIntervalSince1970)).prefix(10)
            var days = try await rows(
                "SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD'), extract(epoch FROM min(ts))::bigint, extract(epoch FROM max(ts))::bigint FROM ticks GROUP BY 1 ORDER BY 1"
            ).compactMap { row -> TradingDay? in
                guard row.count == 3, let date = row[0], let first = row[1].flatMap({ Int64($0) }), let last = row[2].flatMap({ Int64($0) }) else { return nil }
                return TradingDay(date: date, first: first, last: last)
            }
            // Today's ticks are what ingest runs wrote: api-reads reads the recorded days, mixed reads today too.
            days.removeAll { $0.date == today }
            if self.scenario == .mixed {
                let now = Int64(Date().timeIntervalSince1970)
                days.append(TradingDay(date: String(today), first: now - now % 86_400, last: now))
            }
            var symbolList = symbols
            if symbolList.isEmpty {
                symbolList = try await rows("SELECT symbol FROM instruments ORDER BY symbol").compactMap { $0.first ?? nil }
            }
            guard !symbolList.isEmpty else {
                throw UsageFailure(description: "target \(name): ticks and instruments are empty; run: \(self.scenario.preparation)")
            }
            if self.scenario != .ingest, days.isEmpty {
                throw UsageFailure(description: "target \(name): ticks holds no trading day to read; run: \(self.scenario.preparation)")
            }
            return (MarketContext(symbols: symbolList, days: days), 0)
        }
    }

    /// Each statement kind once (extended protocol, values of client 0); INSERTs inside a rolled-back
    /// transaction so the check writes nothing.
    func checkStatements(name: String, spec: ConnectionSpec, context: MarketContext) async -> String? {
        let connection: PGConnection
        switch await self.connect(name: name, spec: spec) {
        case .success(let opened): connection = opened
        case .failure(let problem): return problem.description
        }
        defer { connection.close() }
        var workloads: [any Workload] = []
        if self.scenario == .apiReads || self.scenario == .mixed { workloads.append(APIReadsWorkload(context: context, seed: 1, client: 0)) }
        if self.scenario == .ingest || self.scenario == .mixed {
            workloads.append(IngestWorkload(symbols: context.symbols, seed: 1, client: 0, runID: 0) { Int64(Date().timeIntervalSince1970 * 1_000_000) })
        }
        for var workload in workloads {
            var seen = Set<Int>()
            var attempts = 0
            while seen.count < workload.kinds.count, attempts < 10_000 {
                attempts += 1
                let statement = workload.next()
                guard seen.insert(statement.kind).inserted else { continue }
                let kind = workload.kinds[statement.kind]
                let writes = kind.sql.hasPrefix("INSERT")
                var buffer = connection.channel.allocator.buffer(capacity: 256)
                FrontendEncoder.parse(&buffer, name: "", query: kind.sql, parameterTypes: [])
                LoadClient.bindExecute(&buffer, statement: "", values: statement.parameters)
                let reply: Reply
                do {
                    if writes { _ = try await connection.query("BEGIN").get() }
                    reply = try await Self.send(connection, buffer)
                    if writes { _ = try await connection.query("ROLLBACK").get() }
                } catch {
                    return "target \(name) (\(spec.endpoint)): \(kind.name): \(error)"
                }
                if let error = reply.error {
                    return "target \(name) (\(spec.endpoint)): statement \(kind.name) fails: \(error.message ?? "") (SQLSTATE \(error.sqlState ?? "?")); is the schema of `tidegate migrate` there? \(kind.sql)"
                }
            }
        }
        return nil
    }

    static func send(_ connection: PGConnection, _ buffer: ByteBuffer) async throws -> Reply {
        let promise = connection.eventLoop.makePromise(of: Reply.self)
        connection.eventLoop.execute {
            connection.send(buffer) { result in promise.completeWith(result.mapError { $0 as any Error }) }
        }
        return try await promise.futureResult.get()
    }
}
