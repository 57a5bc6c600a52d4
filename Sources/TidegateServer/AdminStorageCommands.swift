import Foundation
import PostgresWire

/// SHOW STORAGE and SHOW STORAGE GROWTH: read on the primary's `storage.database`.
extension AdminCommands {
    static let storageHelp: [(String, String)] = [
        ("SHOW STORAGE", "per relation and per partition/chunk: rows, bytes, compression, oldest and newest time"),
        ("SHOW STORAGE GROWTH [days]", "growth per day from the size history, and days until storage.disk_bytes fills"),
    ]

    /// Handles the SHOW STORAGE commands; nil when `words` is not one of them.
    func storage(_ words: [String]) async -> AdminResult? {
        guard words.count >= 2, words[0] == "SHOW", words[1] == "STORAGE" else { return nil }
        switch words.count {
        case 2: return await self.storageCommand { try await self.showStorage($0) }
        case 3 where words[2] == "GROWTH":
            return await self.storageCommand { try await self.showGrowth($0, days: self.runtime.config.storage.growthWindowDays) }
        case 4 where words[2] == "GROWTH":
            guard let days = Int(words[3]), (1...3_650).contains(days) else {
                return .error(
                    ErrorFields(severity: "ERROR", sqlState: "22023", message: "SHOW STORAGE GROWTH: \"\(words[3])\" is not a number of days (1…3650)"))
            }
            return await self.storageCommand { try await self.showGrowth($0, days: days) }
        default:
            return nil
        }
    }

    /// Runs a storage command against `storage.database`, with clear errors for a missing schema or primary.
    private func storageCommand(_ body: (@escaping StoragePolicies.Query) async throws -> AdminResult) async -> AdminResult {
        let database = self.runtime.config.storage.database
        let runtime = self.runtime
        let query: StoragePolicies.Query = { try await runtime.primaryQuery(database: database, $0) }
        do {
            guard try await StoragePolicies.flavour(query) != nil else {
                return .error(
                    ErrorFields(
                        severity: "ERROR", sqlState: "42P01",
                        message: "database \"\(database)\" has no storage schema (migration 5)",
                        hint: "Run tidegate migrate --database \(database), or set storage.database."))
            }
            return try await body(query)
        } catch TidegateError.serverRefused(let fields) {
            return .error(
                ErrorFields(
                    severity: "ERROR", sqlState: fields.sqlState ?? "XX000",
                    message: "storage.database \"\(database)\" on the primary: \(fields.message ?? "error")"))
        } catch {
            return .error(ErrorFields(severity: "ERROR", sqlState: "08006", message: "storage: \(error)"))
        }
    }

    private func showStorage(_ query: StoragePolicies.Query) async throws -> AdminResult {
        let rows = try await query(
            """
            SELECT relation, part, rows_estimate, total_bytes, compressed_bytes, compression_ratio,
                   to_char(oldest AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                   to_char(newest AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            FROM tidegate_storage_parts()
            """)
        return .rows(
            columns: ["relation", "part", "rows", "total_bytes", "compressed_bytes", "compression_ratio", "oldest", "newest"],
            rows: rows, tag: "SHOW")
    }

    private func showGrowth(_ query: StoragePolicies.Query, days: Int) async throws -> AdminResult {
        let history = try await query(
            """
            SELECT relation, extract(epoch FROM taken_at)::float8, total_bytes FROM tidegate_storage_history
            WHERE taken_at > now() - interval '\(days) days' ORDER BY relation, taken_at
            """)
        let databaseBytes = try await query("SELECT pg_database_size(current_database())").first?.first.flatMap { $0.flatMap { Int64($0) } } ?? 0
        var samples: [String: [StorageGrowth.Sample]] = [:]
        for row in history {
            guard let relation = row[0], let at = row[1].flatMap({ Double($0) }), let bytes = row[2].flatMap({ Double($0) }) else { continue }
            samples[relation, default: []].append(StorageGrowth.Sample(at: at, bytes: bytes))
        }
        let disk = self.runtime.config.storage.diskBytes
        let names = ["(database)"] + samples.keys.filter { $0 != "(database)" }.sorted()
        let rows: [[String?]] = names.map { name in
            let points = samples[name] ?? []
            let growth = StorageGrowth.bytesPerDay(points)
            let bytes = name == "(database)" ? databaseBytes : Int64(points.last?.bytes ?? 0)
            var forecastDays: String?
            var note: String?
            if name == "(database)" {
                let forecast = StorageGrowth.daysUntilFull(diskBytes: disk, usedBytes: bytes, bytesPerDay: growth)
                forecastDays = forecast.days.map { String(format: "%.1f", $0) }
                note = forecast.reason
            } else if growth == nil {
                note = "not enough history (at least two samples in the window)"
            }
            return [
                name, "\(bytes)", "\(points.count)", "\(days)", growth.map { String(format: "%.0f", $0) },
                name == "(database)" && disk > 0 ? "\(disk)" : nil, forecastDays, note,
            ]
        }
        return .rows(
            columns: ["relation", "bytes", "samples", "window_days", "bytes_per_day", "disk_bytes", "days_until_full", "note"],
            rows: rows, tag: "SHOW")
    }
}
