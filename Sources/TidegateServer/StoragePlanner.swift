import Foundation

/// What a database has of the storage policies (read by `StoragePolicies.observe`).
public struct ObservedStorage: Sendable, Equatable {
    public enum Kind: String, Sendable {
        /// Plain PostgreSQL: range-partitioned by day (ticks, quotes).
        case partitioned
        /// Plain PostgreSQL: a bars rollup table.
        case rollup
        case hypertable
        case continuousAggregate = "continuous_aggregate"
        case table
    }

    /// A TimescaleDB policy job (timescaledb_information.jobs).
    public struct Job: Sendable, Equatable {
        public enum Policy: String, Sendable { case retention, compression, refresh }
        public var id: Int
        public var policy: Policy
        public var relation: String
        public var scheduleSeconds: Int
        /// drop_after (retention) or compress_after (compression), in seconds.
        public var afterSeconds: Int?

        public init(id: Int, policy: Policy, relation: String, scheduleSeconds: Int, afterSeconds: Int? = nil) {
            self.id = id
            self.policy = policy
            self.relation = relation
            self.scheduleSeconds = scheduleSeconds
            self.afterSeconds = afterSeconds
        }
    }

    /// A partition of a plain-PostgreSQL partitioned relation; bounds in seconds since 1970 (nil for DEFAULT).
    public struct Partition: Sendable, Equatable {
        public var name: String
        public var start: Int64?
        public var end: Int64?
        public var isDefault: Bool { self.start == nil && self.end == nil }

        public init(name: String, start: Int64?, end: Int64?) {
            self.name = name
            self.start = start
            self.end = end
        }
    }

    public var flavour: SchemaFlavour
    /// The market-data relations present, by name.
    public var relations: [String: Kind] = [:]
    public var jobs: [Job] = []
    public var partitions: [String: [Partition]] = [:]
    /// Plain PostgreSQL: the oldest row time (seconds) of a relation's DEFAULT partition, or of a rollup
    /// table; absent when empty.
    public var oldestRow: [String: Int64] = [:]
    /// Plain PostgreSQL: 1-minute buckets marked stale, waiting for tidegate_refresh_bars().
    public var staleBars = 0

    public init(flavour: SchemaFlavour) { self.flavour = flavour }
}

/// One line of `tidegate policies show`, and what `apply` runs to make the database match the config.
public struct PolicyStep: Sendable, Equatable {
    public enum Policy: String, Sendable {
        case partitions, retention, compression, refresh
    }

    public var relation: String
    public var policy: Policy
    /// The configured policy, in words.
    public var configured: String
    /// What the database has, in words.
    public var current: String
    /// "ok" when in sync; otherwise what apply does ("add", "replace", "remove", "create 3 partitions"…),
    /// or why it cannot ("unsupported: …").
    public var action: String
    /// The statements apply runs, in order (empty: nothing to do).
    public var statements: [String]

    public var inSync: Bool { self.statements.isEmpty }
}

/// Compares the configured storage policies with what the database has and plans the statements that make
/// the database match. Pure: no I/O; `now` in seconds since 1970.
public enum StoragePlanner {
    static let day: Int64 = 86_400

    public static func plan(
        relations configured: [String: TidegateConfig.Relation], storage: TidegateConfig.Storage, observed: ObservedStorage,
        now: Int64
    ) -> [PolicyStep] {
        var steps: [PolicyStep] = []
        var staleStepAdded = false
        for (name, kind) in observed.relations.sorted(by: { $0.key < $1.key }) {
            let relation = configured[name]
            switch (observed.flavour, kind) {
            case (.timescaledb, .hypertable), (.timescaledb, .continuousAggregate):
                steps += self.timescale(name: name, kind: kind, relation: relation, observed: observed)
            case (.postgres, .partitioned):
                steps.append(self.partitionsAhead(name: name, storage: storage, observed: observed, now: now))
                steps.append(self.partitionRetention(name: name, relation: relation, observed: observed, now: now))
                if let days = relation?.compressAfterDays {
                    steps.append(
                        PolicyStep(
                            relation: name, policy: .compression, configured: "after \(days) days", current: "none",
                            action: "unsupported: plain PostgreSQL has no compression", statements: []))
                }
            case (.postgres, .rollup):
                steps.append(self.rollupRetention(name: name, relation: relation, observed: observed, now: now))
                if !staleStepAdded {
                    staleStepAdded = true
                    steps.append(self.rollupRefresh(configured: configured, observed: observed))
                }
            case (_, .table), (.timescaledb, .partitioned), (.timescaledb, .rollup), (.postgres, .hypertable),
                (.postgres, .continuousAggregate):
                continue
            }
        }
        return steps
    }

    /// Seconds as the shortest exact interval in words ("7 days", "5 minutes", "90 seconds").
    static func words(seconds: Int64) -> String {
        for (unit, size) in [("day", Int64(86_400)), ("hour", 3_600), ("minute", 60)] where seconds >= size && seconds % size == 0 {
            let count = seconds / size
            return "\(count) \(unit)\(count == 1 ? "" : "s")"
        }
        return "\(seconds) second\(seconds == 1 ? "" : "s")"
    }

    static func date(_ seconds: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    }

    static func literal(_ name: String) -> String { "'" + name.replacingOccurrences(of: "'", with: "''") + "'" }

    // MARK: TimescaleDB

    private static func timescale(
        name: String, kind: ObservedStorage.Kind, relation: TidegateConfig.Relation?, observed: ObservedStorage
    ) -> [PolicyStep] {
        let jobs = observed.jobs.filter { $0.relation == name }
        var steps: [PolicyStep] = []
        func afterPolicy(
            _ policy: PolicyStep.Policy, job: ObservedStorage.Job.Policy, days: Int?, add: String, remove: String, argument: String
        ) {
            let current = jobs.first { $0.policy == job }
            let currentText = current.map { "after \(self.words(seconds: Int64($0.afterSeconds ?? 0))) (job \($0.id))" } ?? "none"
            guard let relation else {
                steps.append(
                    PolicyStep(relation: name, policy: policy, configured: "not configured", current: currentText, action: "ok", statements: []))
                return
            }
            let wanted = days.map { Int64($0) * self.day }
            let removeSQL = "SELECT \(remove)(\(self.literal(relation.name)), if_exists => true)"
            let addSQL = wanted.map { "SELECT \(add)(\(self.literal(relation.name)), \(argument) => INTERVAL '\($0) seconds')" }
            let configuredText = wanted.map { "after \(self.words(seconds: $0))" } ?? "none"
            switch (current, addSQL) {
            case (nil, nil):
                steps.append(PolicyStep(relation: name, policy: policy, configured: configuredText, current: currentText, action: "ok", statements: []))
            case (nil, let add?):
                steps.append(PolicyStep(relation: name, policy: policy, configured: configuredText, current: currentText, action: "add", statements: [add]))
            case (_?, nil):
                steps.append(
                    PolicyStep(relation: name, policy: policy, configured: configuredText, current: currentText, action: "remove", statements: [removeSQL]))
            case (let job?, let add?):
                let same = job.afterSeconds.map(Int64.init) == wanted
                steps.append(
                    PolicyStep(
                        relation: name, policy: policy, configured: configuredText, current: currentText, action: same ? "ok" : "replace",
                        statements: same ? [] : [removeSQL, add]))
            }
        }
        afterPolicy(
            .retention, job: .retention, days: relation?.retentionDays, add: "add_retention_policy", remove: "remove_retention_policy",
            argument: "drop_after")
        if kind == .hypertable {
            afterPolicy(
                .compression, job: .compression, days: relation?.compressAfterDays, add: "add_compression_policy",
                remove: "remove_compression_policy", argument: "compress_after")
        } else if let days = relation?.compressAfterDays {
            steps.append(
                PolicyStep(
                    relation: name, policy: .compression, configured: "after \(days) days",
                    current: jobs.contains { $0.policy == .compression } ? "a compression policy" : "none",
                    action: "unsupported: compress a continuous aggregate in a migration", statements: []))
        }
        if kind == .continuousAggregate {
            let current = jobs.first { $0.policy == .refresh }
            let currentText = current.map { "every \(self.words(seconds: Int64($0.scheduleSeconds))) (job \($0.id))" } ?? "no refresh policy"
            let wanted = relation?.refreshIntervalMs.map { Int64(($0 + 999) / 1000) }
            let configuredText = wanted.map { "every \(self.words(seconds: $0))" } ?? "schema default"
            switch (current, wanted) {
            case (_, nil):
                steps.append(PolicyStep(relation: name, policy: .refresh, configured: configuredText, current: currentText, action: "ok", statements: []))
            case (nil, _?):
                steps.append(
                    PolicyStep(
                        relation: name, policy: .refresh, configured: configuredText, current: currentText,
                        action: "unsupported: no refresh policy to adjust (add_continuous_aggregate_policy needs offsets; add it in a migration)",
                        statements: []))
            case (let job?, let seconds?):
                let same = Int64(job.scheduleSeconds) == seconds
                steps.append(
                    PolicyStep(
                        relation: name, policy: .refresh, configured: configuredText, current: currentText, action: same ? "ok" : "alter",
                        statements: same ? [] : ["SELECT alter_job(\(job.id), schedule_interval => INTERVAL '\(seconds) seconds')"]))
            }
        }
        return steps
    }

    // MARK: Plain PostgreSQL

    /// Daily partitions for today and the `partitions_ahead_days` days after it.
    static func partitionsAhead(name: String, storage: TidegateConfig.Storage, observed: ObservedStorage, now: Int64) -> PolicyStep {
        let today = now - ((now % self.day) + self.day) % self.day
        let days = storage.partitionsAheadDays + 1
        let daily = (observed.partitions[name] ?? []).filter { !$0.isDefault }
        let covered = Set(daily.compactMap(\.start))
        let missing = (0..<Int64(days)).map { today + $0 * self.day }.filter { !covered.contains($0) }
        let ahead = daily.compactMap(\.start).filter { $0 >= today }.count
        let current = daily.isEmpty ? "no daily partitions" : "\(daily.count) daily partitions, \(ahead) from today on; last \(self.date((daily.compactMap(\.start).max() ?? 0)))"
        return PolicyStep(
            relation: name, policy: .partitions, configured: "today + \(storage.partitionsAheadDays) days ahead", current: current,
            action: missing.isEmpty ? "ok" : "create \(missing.count) partition\(missing.count == 1 ? "" : "s")",
            statements: missing.isEmpty
                ? [] : ["SELECT tidegate_ensure_partitions(\(self.literal(name)), (to_timestamp(\(today)) AT TIME ZONE 'UTC')::date, \(days))"])
    }

    static func partitionRetention(name: String, relation: TidegateConfig.Relation?, observed: ObservedStorage, now: Int64) -> PolicyStep {
        let daily = (observed.partitions[name] ?? []).filter { !$0.isDefault }
        let oldest = daily.compactMap(\.start).min()
        let current = oldest.map { "oldest partition \(self.date($0))" } ?? "no daily partitions"
        guard let days = relation?.retentionDays else {
            return PolicyStep(
                relation: name, policy: .retention, configured: relation == nil ? "not configured" : "keep everything", current: current,
                action: "ok", statements: [])
        }
        let cutoff = now - Int64(days) * self.day
        let expired = daily.filter { ($0.end ?? .max) <= cutoff }
        let defaultExpired = observed.oldestRow[name].map { $0 < cutoff } ?? false
        var action = "ok"
        if !expired.isEmpty || defaultExpired {
            var parts: [String] = []
            if !expired.isEmpty { parts.append("drop \(expired.count) partition\(expired.count == 1 ? "" : "s")") }
            if defaultExpired { parts.append("delete the DEFAULT partition's rows before \(self.date(cutoff))") }
            action = parts.joined(separator: ", ")
        }
        return PolicyStep(
            relation: name, policy: .retention, configured: "\(days) days", current: current, action: action,
            statements: action == "ok" ? [] : ["SELECT * FROM tidegate_drop_partitions_before(\(self.literal(name)), to_timestamp(\(cutoff)))"])
    }

    static func rollupRetention(name: String, relation: TidegateConfig.Relation?, observed: ObservedStorage, now: Int64) -> PolicyStep {
        let current = observed.oldestRow[name].map { "oldest bar \(self.date($0))" } ?? "empty"
        guard let days = relation?.retentionDays else {
            return PolicyStep(
                relation: name, policy: .retention, configured: relation == nil ? "not configured" : "keep everything", current: current,
                action: "ok", statements: [])
        }
        let cutoff = now - Int64(days) * self.day
        let column = relation?.timeColumn ?? "bucket"
        let expired = observed.oldestRow[name].map { $0 < cutoff } ?? false
        return PolicyStep(
            relation: name, policy: .retention, configured: "\(days) days", current: current,
            action: expired ? "delete bars before \(self.date(cutoff))" : "ok",
            statements: expired
                ? ["DELETE FROM \(self.identifier(name)) WHERE \(self.identifier(column)) < to_timestamp(\(cutoff))"] : [])
    }

    /// Plain PostgreSQL refreshes every level in one pass (tidegate_refresh_bars()).
    static func rollupRefresh(configured: [String: TidegateConfig.Relation], observed: ObservedStorage) -> PolicyStep {
        let interval = self.rollupRefreshIntervalMs(configured)
        return PolicyStep(
            relation: "bars_*", policy: .refresh,
            configured: interval.map { "every \(self.words(seconds: Int64(($0 + 999) / 1000))) (shortest of bars_*)" } ?? "every maintenance run",
            current: "\(observed.staleBars) stale minute\(observed.staleBars == 1 ? "" : "s")",
            action: observed.staleBars == 0 ? "ok" : "refresh", statements: observed.staleBars == 0 ? [] : ["SELECT tidegate_refresh_bars()"])
    }

    /// The shortest refresh_interval_ms configured on a bars relation (nil: none configured).
    public static func rollupRefreshIntervalMs(_ configured: [String: TidegateConfig.Relation]) -> Int? {
        configured.values.filter { $0.name.hasPrefix("bars_") }.compactMap(\.refreshIntervalMs).min()
    }

    static func identifier(_ name: String) -> String { "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }
}
