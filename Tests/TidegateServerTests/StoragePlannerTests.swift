import Foundation
import Testing

@testable import TidegateServer

@Suite struct StorageGrowthTests {
    @Test func slopeOfALineIsItsGrowthPerDay() throws {
        let start = 1_800_000_000.0
        // 1 MB a day, sampled hourly for three days.
        let samples = (0..<72).map { StorageGrowth.Sample(at: start + Double($0) * 3_600, bytes: 5e9 + Double($0) * 1e6 / 24) }
        let growth = try #require(StorageGrowth.bytesPerDay(samples))
        #expect(abs(growth - 1e6) < 1e-3)
    }

    @Test func leastSquaresThroughNoise() throws {
        // Points above and below a 100 bytes/day line by the same amount: the fit is the line.
        let samples = [(0.0, 1_000.0), (1.0, 1_150.0), (2.0, 1_150.0), (3.0, 1_350.0)].map {
            StorageGrowth.Sample(at: $0.0 * 86_400, bytes: $0.1)
        }
        let growth = try #require(StorageGrowth.bytesPerDay(samples))
        #expect(abs(growth - 105) < 1e-9)
    }

    @Test func tooFewOrSimultaneousSamplesGiveNoGrowth() {
        #expect(StorageGrowth.bytesPerDay([]) == nil)
        #expect(StorageGrowth.bytesPerDay([.init(at: 1, bytes: 10)]) == nil)
        #expect(StorageGrowth.bytesPerDay([.init(at: 1, bytes: 10), .init(at: 1, bytes: 20)]) == nil)
    }

    @Test func forecastIsFreeSpaceOverGrowth() {
        let forecast = StorageGrowth.daysUntilFull(diskBytes: 1_000, usedBytes: 400, bytesPerDay: 20)
        #expect(forecast == .init(days: 30, reason: nil))
    }

    @Test func forecastSaysWhyItHasNoAnswer() {
        #expect(StorageGrowth.daysUntilFull(diskBytes: 0, usedBytes: 400, bytesPerDay: 20).reason?.contains("disk_bytes is 0") == true)
        #expect(StorageGrowth.daysUntilFull(diskBytes: 1_000, usedBytes: 400, bytesPerDay: nil).reason?.contains("not enough history") == true)
        #expect(StorageGrowth.daysUntilFull(diskBytes: 1_000, usedBytes: 400, bytesPerDay: -5) == .init(days: nil, reason: "not growing"))
        #expect(StorageGrowth.daysUntilFull(diskBytes: 1_000, usedBytes: 1_200, bytesPerDay: 5).days == 0)
    }
}

@Suite struct StoragePlannerTests {
    static let day: Int64 = 86_400
    /// 2026-12-01 12:00 UTC.
    static let now: Int64 = 1_796_126_400
    static var today: Int64 { now - now % day }

    static func relation(_ name: String, retention: Int? = nil, compress: Int? = nil, refreshMs: Int? = nil) -> TidegateConfig.Relation {
        var relation = TidegateConfig.Relation(name: name)
        relation.retentionDays = retention
        relation.compressAfterDays = compress
        relation.refreshIntervalMs = refreshMs
        if name.hasPrefix("bars_") { relation.timeColumn = "bucket" }
        return relation
    }

    static func plain(days: [Int64], defaultOldest: Int64? = nil) -> ObservedStorage {
        var observed = ObservedStorage(flavour: .postgres)
        observed.relations = ["ticks": .partitioned, "bars_1m": .rollup, "instruments": .table]
        observed.partitions["ticks"] =
            [ObservedStorage.Partition(name: "ticks_default", start: nil, end: nil)]
            + days.map { ObservedStorage.Partition(name: "ticks_p\($0)", start: today + $0 * day, end: today + ($0 + 1) * day) }
        if let defaultOldest { observed.oldestRow["ticks"] = defaultOldest }
        return observed
    }

    @Test func plainCreatesTheMissingPartitionsAhead() throws {
        var storage = TidegateConfig.Storage()
        storage.partitionsAheadDays = 3
        let steps = StoragePlanner.plan(relations: [:], storage: storage, observed: Self.plain(days: [0, 1]), now: Self.now)
        let partitions = try #require(steps.first { $0.relation == "ticks" && $0.policy == .partitions })
        #expect(partitions.action == "create 2 partitions")
        #expect(partitions.statements == ["SELECT tidegate_ensure_partitions('ticks', (to_timestamp(\(Self.today)) AT TIME ZONE 'UTC')::date, 4)"])
        let inSync = StoragePlanner.plan(relations: [:], storage: storage, observed: Self.plain(days: [0, 1, 2, 3]), now: Self.now)
        #expect(inSync.first { $0.policy == .partitions }?.inSync == true)
    }

    @Test func plainRetentionDropsWhollyExpiredPartitionsAndOldDefaultRows() throws {
        let config = ["ticks": Self.relation("ticks", retention: 30)]
        // Day -31 ends 30 days before today's midnight, i.e. before now - 30 days: expired. Day -30 ends
        // after the cutoff (now - 30 days at noon): kept.
        let observed = Self.plain(days: [-40, -31, -30, 0, 1, 2, 3, 4, 5, 6, 7])
        let step = try #require(
            StoragePlanner.plan(relations: config, storage: .init(), observed: observed, now: Self.now).first { $0.relation == "ticks" && $0.policy == .retention })
        #expect(step.action == "drop 2 partitions")
        #expect(step.statements == ["SELECT * FROM tidegate_drop_partitions_before('ticks', to_timestamp(\(Self.now - 30 * Self.day)))"])

        let withDefault = Self.plain(days: [0], defaultOldest: Self.now - 400 * Self.day)
        let defaultStep = try #require(
            StoragePlanner.plan(relations: config, storage: .init(), observed: withDefault, now: Self.now).first { $0.relation == "ticks" && $0.policy == .retention })
        #expect(defaultStep.action.contains("delete the DEFAULT partition's rows"))

        let unconfigured = StoragePlanner.plan(relations: [:], storage: .init(), observed: observed, now: Self.now)
        #expect(unconfigured.first { $0.relation == "ticks" && $0.policy == .retention }?.inSync == true)
        #expect(unconfigured.first { $0.relation == "ticks" && $0.policy == .retention }?.configured == "not configured")
    }

    @Test func plainCompressionIsReportedUnsupportedAndRollupsRefreshWhenStale() throws {
        var observed = Self.plain(days: Array(0...7))
        observed.staleBars = 12
        observed.oldestRow["bars_1m"] = Self.now - 10 * Self.day
        let config = [
            "ticks": Self.relation("ticks", compress: 7), "bars_1m": Self.relation("bars_1m", retention: 5, refreshMs: 60_000),
            "bars_5m": Self.relation("bars_5m", refreshMs: 300_000),
        ]
        let steps = StoragePlanner.plan(relations: config, storage: .init(), observed: observed, now: Self.now)
        let compression = try #require(steps.first { $0.policy == .compression })
        #expect(compression.action.hasPrefix("unsupported") && compression.inSync)
        let refresh = try #require(steps.first { $0.policy == .refresh })
        #expect(refresh.statements == ["SELECT tidegate_refresh_bars()"])
        #expect(refresh.configured.hasPrefix("every 1 minute"))
        let bars = try #require(steps.first { $0.relation == "bars_1m" && $0.policy == .retention })
        #expect(bars.statements == ["DELETE FROM \"bars_1m\" WHERE \"bucket\" < to_timestamp(\(Self.now - 5 * Self.day))"])
        #expect(StoragePlanner.rollupRefreshIntervalMs(config) == 60_000)
    }

    static func timescale(_ jobs: [ObservedStorage.Job]) -> ObservedStorage {
        var observed = ObservedStorage(flavour: .timescaledb)
        observed.relations = ["ticks": .hypertable, "quotes": .hypertable, "bars_1m": .continuousAggregate]
        observed.jobs = jobs
        return observed
    }

    @Test func timescaleReplacesAddsAndRemovesPolicies() throws {
        let observed = Self.timescale([
            .init(id: 1000, policy: .compression, relation: "ticks", scheduleSeconds: 43_200, afterSeconds: 7 * 86_400),
            .init(id: 1001, policy: .retention, relation: "ticks", scheduleSeconds: 86_400, afterSeconds: 365 * 86_400),
            .init(id: 1002, policy: .retention, relation: "quotes", scheduleSeconds: 86_400, afterSeconds: 90 * 86_400),
            .init(id: 1003, policy: .refresh, relation: "bars_1m", scheduleSeconds: 60),
        ])
        let config = [
            "ticks": Self.relation("ticks", retention: 30, compress: 7),
            "quotes": Self.relation("quotes", compress: 2),
            "bars_1m": Self.relation("bars_1m", refreshMs: 120_000),
        ]
        let steps = StoragePlanner.plan(relations: config, storage: .init(), observed: observed, now: Self.now)
        func step(_ relation: String, _ policy: PolicyStep.Policy) -> PolicyStep? {
            steps.first { $0.relation == relation && $0.policy == policy }
        }
        #expect(step("ticks", .retention)?.action == "replace")
        #expect(
            step("ticks", .retention)?.statements == [
                "SELECT remove_retention_policy('ticks', if_exists => true)",
                "SELECT add_retention_policy('ticks', drop_after => INTERVAL '2592000 seconds')",
            ])
        #expect(step("ticks", .compression)?.inSync == true)
        #expect(step("ticks", .compression)?.current == "after 7 days (job 1000)")
        #expect(step("quotes", .retention)?.statements == ["SELECT remove_retention_policy('quotes', if_exists => true)"])
        #expect(
            step("quotes", .compression)?.statements == [
                "SELECT add_compression_policy('quotes', compress_after => INTERVAL '172800 seconds')"
            ])
        #expect(step("bars_1m", .refresh)?.statements == ["SELECT alter_job(1003, schedule_interval => INTERVAL '120 seconds')"])
        #expect(step("bars_1m", .refresh)?.current == "every 1 minute (job 1003)")
    }

    @Test func timescaleLeavesUnconfiguredRelationsAlone() {
        let observed = Self.timescale([.init(id: 1001, policy: .retention, relation: "ticks", scheduleSeconds: 86_400, afterSeconds: 86_400)])
        let steps = StoragePlanner.plan(relations: [:], storage: .init(), observed: observed, now: Self.now)
        #expect(steps.allSatisfy { $0.inSync })
        #expect(steps.first { $0.relation == "ticks" && $0.policy == .retention }?.current == "after 1 day (job 1001)")
    }

    @Test func intervalsInWords() {
        #expect(StoragePlanner.words(seconds: 86_400 * 7) == "7 days")
        #expect(StoragePlanner.words(seconds: 3_600) == "1 hour")
        #expect(StoragePlanner.words(seconds: 300) == "5 minutes")
        #expect(StoragePlanner.words(seconds: 90) == "90 seconds")
    }
}

@Suite struct StorageConfigTests {
    @Test func defaultsAndTheLabFile() async throws {
        let defaults = TidegateConfig.Storage()
        #expect(defaults.partitionsAheadDays == 7 && defaults.maintenanceIntervalMs == 60_000)
        #expect(defaults.historyIntervalMs == 3_600_000 && defaults.diskBytes == 0 && defaults.database == "market")
        let lab = try await TidegateConfig.load(path: ConfigTests.labConfigPath, environment: [:])
        #expect(lab.storage == defaults)
        #expect(lab.relations["bars_1m"]?.refreshIntervalMs == 60_000)
        #expect(lab.relations["bars_1d"]?.timeColumn == "bucket")
    }

    @Test func storageKeysAreReadAndChecked() async throws {
        let yaml = ConfigTests.minimalYAML + """

            storage:
              partitions_ahead_days: 14
              maintenance_interval_ms: 0
              history_interval_ms: 60000
              disk_bytes: 500000000000
              database: ticksdb
            """
        let config = try await ConfigTests.withTemporaryFile(yaml) { try await TidegateConfig.load(path: $0, environment: [:]) }
        #expect(config.storage.partitionsAheadDays == 14 && config.storage.maintenanceIntervalMs == 0)
        #expect(config.storage.diskBytes == 500_000_000_000 && config.storage.database == "ticksdb")
        let problems = try await ConfigTests.problems(
            ConfigTests.minimalYAML, environment: ["TIDEGATE_STORAGE_MAINTENANCE_INTERVAL_MS": "50", "TIDEGATE_STORAGE_DISK_BYTES": "big"])
        #expect(problems.contains { $0.contains("storage.maintenance_interval_ms: 50 is below 1000") })
        #expect(problems.contains { $0.contains("storage.disk_bytes: expected a whole number") })
    }
}
