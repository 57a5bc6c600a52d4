import LoadtestCore
import NIOCore

/// Tidegate's admin console (the virtual database `tidegate`): the cache counters and the batching
/// figures, read before, during and after a run.
final class AdminConsole: @unchecked Sendable {
    let connection: PGConnection
    let spec: ConnectionSpec

    struct CacheCounters: Sendable {
        var hits: Int64
        var misses: Int64
        var bypasses: Int64
    }

    struct BatchRow: Sendable {
        var relation: String
        var values: [String: String]

        func integer(_ column: String) -> Int64 { Int64(self.values[column] ?? "") ?? 0 }
        func number(_ column: String) -> Double? { Double(self.values[column] ?? "") }
    }

    private init(connection: PGConnection, spec: ConnectionSpec) {
        self.connection = connection
        self.spec = spec
    }

    /// nil when nothing there answers `SHOW HELP` as Tidegate's console does (PostgreSQL and PgBouncer
    /// refuse the database `tidegate`).
    static func open(_ spec: ConnectionSpec, on loop: any EventLoop) async -> AdminConsole? {
        guard let connection = try? await PGConnection.connect(spec, on: loop, timeout: .seconds(3)).get() else { return nil }
        guard let reply = try? await connection.query("SHOW HELP").get(), reply.error == nil, reply.rows > 0 else {
            connection.close()
            return nil
        }
        return AdminConsole(connection: connection, spec: spec)
    }

    /// nil when the cache is off (SHOW CACHE fails) or the console stops answering.
    func cache() async -> CacheCounters? {
        guard let reply = try? await self.connection.query("SHOW CACHE").get(), reply.error == nil, let row = reply.values.first else {
            return nil
        }
        func value(_ column: String) -> Int64 {
            guard let index = reply.columns.firstIndex(of: column), index < row.count else { return 0 }
            return Int64(row[index] ?? "") ?? 0
        }
        return CacheCounters(hits: value("hits"), misses: value("misses"), bypasses: value("bypasses"))
    }

    /// One row per (database, relation) with batching; empty when batching is off or unknown.
    func batches() async -> [BatchRow] {
        guard let reply = try? await self.connection.query("SHOW BATCHES").get(), reply.error == nil else { return [] }
        return reply.values.map { row in
            var values: [String: String] = [:]
            for (index, column) in reply.columns.enumerated() where index < row.count { values[column] = row[index] }
            let relation = [values["database"], values["relation"]].compactMap { $0 }.joined(separator: ".")
            return BatchRow(relation: relation, values: values)
        }
    }

    func close() { self.connection.close() }

    /// The run's figures: counter deltas, percentiles as the console gave them at the end.
    static func figures(cacheBefore: CacheCounters?, cacheAfter: CacheCounters?, batchesBefore: [BatchRow], batchesAfter: [BatchRow]) -> AdminFigures {
        var notes: [String] = []
        var hits: Int64?
        var misses: Int64?
        var bypasses: Int64?
        if let before = cacheBefore, let after = cacheAfter {
            hits = after.hits - before.hits
            misses = after.misses - before.misses
            bypasses = after.bypasses - before.bypasses
        } else {
            notes.append("no cache figures (SHOW CACHE did not answer: the cache is off)")
        }
        var batches: [BatchFigures] = []
        for after in batchesAfter {
            let before = batchesBefore.first { $0.relation == after.relation }
            func delta(_ column: String) -> Int64 { after.integer(column) - (before?.integer(column) ?? 0) }
            let rows = delta("rows")
            let count = delta("batches")
            guard delta("statements") > 0 || count > 0 else { continue }
            batches.append(
                BatchFigures(
                    relation: after.relation, statements: delta("statements"), rows: rows, batches: count, rejects: delta("rejects"),
                    duplicates: delta("duplicates"), errors: delta("errors"), rowsPerBatch: count > 0 ? Double(rows) / Double(count) : nil,
                    p50Rows: after.number("p50_rows"), p99Rows: after.number("p99_rows"), p50DelayMs: after.number("p50_delay_ms"),
                    p99DelayMs: after.number("p99_delay_ms"), p50CommitMs: after.number("p50_commit_ms"),
                    p99CommitMs: after.number("p99_commit_ms")))
        }
        return AdminFigures(cacheHits: hits, cacheMisses: misses, cacheBypasses: bypasses, batches: batches, notes: notes)
    }
}
