import Foundation

/// The database side of the storage policies: reading what a database has (`observe`) and running a
/// plan (`apply`). Every query goes through `query`, so the command line (a direct connection to the
/// primary) and `tidegate serve` (its pools) share this code.
public enum StoragePolicies {
    public typealias Query = @Sendable (String) async throws -> [[String?]]

    /// The flavour migration 5 (storage) was applied in; nil when the database lacks it.
    public static func flavour(_ query: Query) async throws -> SchemaFlavour? {
        guard try await query("SELECT to_regclass('tidegate_schema_migrations') IS NOT NULL AND to_regclass('tidegate_storage_history') IS NOT NULL")
            .first?.first == "t"
        else { return nil }
        guard let text = try await query("SELECT flavour FROM tidegate_schema_migrations WHERE version = 5").first?.first,
            let flavour = text.flatMap(SchemaFlavour.init(rawValue:))
        else { return nil }
        return flavour
    }

    /// Reads the relations, their partitions (plain) or policy jobs (TimescaleDB).
    public static func observe(_ query: Query, flavour: SchemaFlavour) async throws -> ObservedStorage {
        var observed = ObservedStorage(flavour: flavour)
        var timeColumns: [String: String] = [:]
        for row in try await query("SELECT relation, kind, time_column FROM tidegate_storage_relations()") {
            guard let name = row[0], let kind = row[1].flatMap(ObservedStorage.Kind.init(rawValue:)) else { continue }
            observed.relations[name] = kind
            if let column = row[2] { timeColumns[name] = column }
        }
        switch flavour {
        case .timescaledb:
            let rows = try await query(
                """
                SELECT j.job_id, j.proc_name, coalesce(ca.view_name::text, j.hypertable_name::text),
                       extract(epoch FROM j.schedule_interval)::bigint,
                       extract(epoch FROM coalesce(j.config->>'drop_after', j.config->>'compress_after')::interval)::bigint
                FROM timescaledb_information.jobs j
                LEFT JOIN timescaledb_information.continuous_aggregates ca
                  ON ca.materialization_hypertable_schema = j.hypertable_schema
                 AND ca.materialization_hypertable_name = j.hypertable_name
                WHERE j.proc_name IN ('policy_retention', 'policy_compression', 'policy_refresh_continuous_aggregate')
                ORDER BY j.job_id
                """)
            for row in rows {
                guard let id = row[0].flatMap({ Int($0) }), let relation = row[2] else { continue }
                let policy: ObservedStorage.Job.Policy
                switch row[1] {
                case "policy_retention": policy = .retention
                case "policy_compression": policy = .compression
                default: policy = .refresh
                }
                observed.jobs.append(
                    ObservedStorage.Job(
                        id: id, policy: policy, relation: relation, scheduleSeconds: row[3].flatMap { Int($0) } ?? 0,
                        afterSeconds: row[4].flatMap { Int($0) }))
            }
        case .postgres:
            let rows = try await query(
                """
                SELECT r.relation, p.part, extract(epoch FROM p.range_start)::bigint, extract(epoch FROM p.range_end)::bigint, p.is_default
                FROM tidegate_storage_relations() r, tidegate_partitions(r.relation::regclass) p
                WHERE r.kind = 'partitioned'
                """)
            var defaults: [String: String] = [:]
            for row in rows {
                guard let relation = row[0], let part = row[1] else { continue }
                if row[4] == "t" { defaults[relation] = part }
                observed.partitions[relation, default: []].append(
                    ObservedStorage.Partition(
                        name: part, start: row[4] == "t" ? nil : row[2].flatMap { Int64($0) },
                        end: row[4] == "t" ? nil : row[3].flatMap { Int64($0) }))
            }
            // The oldest row of each DEFAULT partition and rollup table (index scans, see migration 5).
            var oldest: [String] = []
            for (relation, kind) in observed.relations.sorted(by: { $0.key < $1.key }) {
                guard let column = timeColumns[relation] else { continue }
                let table: String
                switch kind {
                case .partitioned:
                    guard let part = defaults[relation] else { continue }
                    table = part
                case .rollup: table = relation
                case .hypertable, .continuousAggregate, .table: continue
                }
                oldest.append(
                    "SELECT \(StoragePlanner.literal(relation)), extract(epoch FROM (SELECT min(\(StoragePlanner.identifier(column))) FROM \(StoragePlanner.identifier(table))))::bigint"
                )
            }
            if !oldest.isEmpty {
                for row in try await query(oldest.joined(separator: " UNION ALL ")) {
                    if let relation = row[0], let seconds = row[1].flatMap({ Int64($0) }) { observed.oldestRow[relation] = seconds }
                }
            }
            if try await query("SELECT to_regclass('tidegate_bars_dirty') IS NOT NULL").first?.first == "t" {
                observed.staleBars = try await query("SELECT count(*) FROM tidegate_bars_dirty").first?.first.flatMap { $0.flatMap { Int($0) } } ?? 0
            }
        }
        return observed
    }

    /// Runs each step's statements as one simple query (one implicit transaction: a replaced policy is
    /// removed and added together). Returns a line per step, with the rows its statements returned.
    public static func apply(_ steps: [PolicyStep], query: Query) async throws -> [String] {
        var lines: [String] = []
        for step in steps where !step.inSync {
            let rows: [[String?]]
            do {
                rows = try await query(step.statements.joined(separator: ";\n"))
            } catch {
                throw MigrationError("\(step.relation) \(step.policy.rawValue) (\(step.action)) failed: \(error)")
            }
            // What the plain flavour's functions return (partitions dropped, buckets refreshed) is worth
            // printing; TimescaleDB's policy functions return job records and ids.
            let detail = step.statements.contains(where: { $0.contains("tidegate_") })
                ? rows.map { $0.map { $0 ?? "NULL" }.joined(separator: " ") }.joined(separator: ", ") : ""
            lines.append("\(step.relation) \(step.policy.rawValue): \(step.action)\(detail.isEmpty ? "" : " (\(detail))")")
        }
        return lines
    }

    /// The plan for a database: its flavour, what it has and the steps.
    public static func plan(
        config: TidegateConfig, query: Query, now: Int64 = Int64(Date().timeIntervalSince1970)
    ) async throws -> (SchemaFlavour, [PolicyStep]) {
        guard let flavour = try await self.flavour(query) else {
            throw MigrationError("the database has no storage schema (migration 5); run tidegate migrate first")
        }
        let observed = try await self.observe(query, flavour: flavour)
        return (flavour, StoragePlanner.plan(relations: config.relations, storage: config.storage, observed: observed, now: now))
    }

    /// `tidegate policies show|apply`: connects to the primary and plans; applies unless `apply` is false or
    /// `dryRun`. Returns the lines to print.
    public static func run(
        config: TidegateConfig, database: String?, user: String?, apply: Bool, dryRun: Bool
    ) async throws -> [String] {
        let database = database ?? config.storage.database
        let primary = try await PrimaryConnection.connect(config: config, database: database, user: user)
        do {
            let query: Query = { try await primary.rows($0) }
            let (flavour, steps) = try await self.plan(config: config, query: query)
            var lines = ["policies: \(database) on \(primary.node) (\(flavour.rawValue) flavour)"]
            lines += self.table(steps)
            if apply {
                if dryRun {
                    lines.append("dry run: \(steps.filter { !$0.inSync }.count) step(s) would be applied")
                    for step in steps where !step.inSync {
                        lines += step.statements.map { "  \($0)" }
                    }
                } else {
                    let done = try await self.apply(steps, query: query)
                    lines.append("applied \(done.count) step(s)")
                    lines += done.map { "  \($0)" }
                }
            }
            await primary.close()
            return lines
        } catch {
            await primary.close()
            throw error
        }
    }

    /// The steps as an aligned text table.
    static func table(_ steps: [PolicyStep]) -> [String] {
        let header = ["relation", "policy", "configured", "current", "action"]
        let rows = steps.map { [$0.relation, $0.policy.rawValue, $0.configured, $0.current, $0.action] }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                .joined(separator: " | ").trimmingCharacters(in: .whitespaces)
        }
        return [line(header), widths.map { String(repeating: "-", count: $0) }.joined(separator: "-+-")] + rows.map(line)
    }
}
