import Foundation
import PostgresWire

/// SHOW BATCHES: insert coalescing per (database, relation).
extension AdminCommands {
    static let batchHelp: [(String, String)] = [
        ("SHOW BATCHES", "insert coalescing per relation: rows/s, batch size and delay, rejects, duplicates, errors, queue depth"),
    ]

    func batches(_ words: [String]) -> AdminResult? {
        guard words == ["SHOW", "BATCHES"] else { return nil }
        let columns = [
            "database", "relation", "statements", "rows", "rows_per_s", "batches", "avg_rows", "p50_rows", "p99_rows", "p50_delay_ms",
            "p99_delay_ms", "p50_commit_ms", "p99_commit_ms", "rejects", "duplicates", "errors", "queued_statements", "queued_rows",
            "queued_bytes", "not_batched",
        ]
        func ms(_ nanos: Int64?) -> String? { nanos.map { String(format: "%.3f", Double($0) / 1e6) } }
        var rows: [[String?]] = []
        for (key, entry) in self.runtime.batchStats.snapshot() {
            let queued = entry.queued.values.reduce((0, 0, 0)) { ($0.0 + $1.statements, $0.1 + $1.rows, $0.2 + $1.bytes) }
            let notBatched = entry.unbatchable.sorted { $0.key < $1.key }.map { "\($0.key) (\($0.value))" }.joined(separator: "; ")
            rows.append([
                key.database, key.relation, "\(entry.statements)", "\(entry.rows)", String(format: "%.1f", BatchStatistics.rowsPerSecond(entry)),
                "\(entry.batches)", entry.batches == 0 ? "0" : String(format: "%.1f", Double(entry.batchedRows) / Double(entry.batches)),
                entry.recentRows.percentile(0.5).map { "\($0)" }, entry.recentRows.percentile(0.99).map { "\($0)" },
                ms(entry.recentDelays.percentile(0.5)), ms(entry.recentDelays.percentile(0.99)), ms(entry.recentCommits.percentile(0.5)),
                ms(entry.recentCommits.percentile(0.99)), "\(entry.rejects)", "\(entry.duplicates)", "\(entry.errors)", "\(queued.0)",
                "\(queued.1)", "\(queued.2)", notBatched,
            ])
        }
        return .rows(columns: columns, rows: rows, tag: "SHOW")
    }
}
