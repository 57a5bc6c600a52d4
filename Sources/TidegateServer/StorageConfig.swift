import Configuration

extension TidegateConfig {
    /// `storage:` — the maintenance job of `tidegate serve` (partitions ahead, retention, rollup refresh on
    /// plain PostgreSQL; size history on both flavours) and the inputs of the storage forecast.
    public struct Storage: Sendable, Equatable {
        /// Daily partitions kept created ahead of today (plain PostgreSQL), today included.
        public var partitionsAheadDays = 7
        /// How often the maintenance job runs on the primary; 0 disables it.
        public var maintenanceIntervalMs = 60_000
        /// How often relation sizes are recorded into tidegate_storage_history.
        public var historyIntervalMs = 3_600_000
        /// Capacity of the database's disk, for the forecast of days until it fills; 0: unknown (no forecast).
        public var diskBytes: Int64 = 0
        /// The database the job maintains (and the admin console's SHOW STORAGE reads).
        public var database = "market"
        /// Days of history the growth (least squares) is fitted over.
        public var growthWindowDays = 7

        public init() {}
    }

    static func readStorage(_ fields: ConfigFields, into storage: inout Storage) {
        func int(_ key: String, _ value: inout Int, min: Int, max: Int = Int.max) {
            fields.int("storage.\(key)", &value, min: min, max: max)
        }
        int("partitions_ahead_days", &storage.partitionsAheadDays, min: 1, max: 366)
        int("maintenance_interval_ms", &storage.maintenanceIntervalMs, min: 0)
        if storage.maintenanceIntervalMs > 0 && storage.maintenanceIntervalMs < 1_000 {
            fields.problems.append("storage.maintenance_interval_ms: \(storage.maintenanceIntervalMs) is below 1000 (0 disables the job)")
        }
        int("history_interval_ms", &storage.historyIntervalMs, min: 1_000)
        var disk = Int(storage.diskBytes)
        int("disk_bytes", &disk, min: 0)
        storage.diskBytes = Int64(disk)
        int("growth_window_days", &storage.growthWindowDays, min: 1, max: 3_650)
        if let database = fields.reader.string(forKey: ConfigKey("storage.database")) {
            if database.isEmpty {
                fields.problems.append("storage.database: must name a database")
            } else {
                storage.database = database
            }
        }
    }

    /// The `storage.*` rows of SHOW CONFIG.
    var storageConfigRows: [[String?]] {
        [
            ["storage.partitions_ahead_days", "\(self.storage.partitionsAheadDays)"],
            ["storage.maintenance_interval_ms", "\(self.storage.maintenanceIntervalMs)"],
            ["storage.history_interval_ms", "\(self.storage.historyIntervalMs)"],
            ["storage.disk_bytes", "\(self.storage.diskBytes)"],
            ["storage.database", self.storage.database],
            ["storage.growth_window_days", "\(self.storage.growthWindowDays)"],
        ]
            + self.relations.values.sorted { $0.name < $1.name }.flatMap { relation -> [[String?]] in
                let key = "relations.\(relation.name)"
                return [
                    ["\(key).retention_days", relation.retentionDays.map { "\($0)" }],
                    ["\(key).compress_after_days", relation.compressAfterDays.map { "\($0)" }],
                    ["\(key).refresh_interval_ms", relation.refreshIntervalMs.map { "\($0)" }],
                ]
            }
    }
}
