import Crypto
import Foundation
import Logging
import SQLAnalysis

/// The schema's flavour: TimescaleDB when the server has the extension, plain PostgreSQL otherwise.
public enum SchemaFlavour: String, Sendable, CaseIterable {
    case timescaledb
    case postgres
}

/// One numbered migration, in the flavour chosen for the server.
public struct Migration: Sendable, Equatable {
    public var version: Int
    public var name: String
    /// The file it comes from (relative to the migrations directory).
    public var file: String
    public var sql: String
    /// SHA-256 of the file's bytes, hex.
    public var checksum: String
}

/// A migration recorded in `tidegate_schema_migrations`.
public struct AppliedMigration: Sendable, Equatable {
    public var version: Int
    public var name: String
    public var checksum: String
    public var flavour: String

    public init(version: Int, name: String, checksum: String, flavour: String) {
        self.version = version
        self.name = name
        self.checksum = checksum
        self.flavour = flavour
    }
}

public struct MigrationError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Reading the migrations directory and deciding what to apply: pure, no database.
///
/// Files are named `NNNN_name.sql` (both flavours), or `NNNN_name.timescaledb.sql` and
/// `NNNN_name.postgres.sql` (one per flavour; a version with flavour files needs both).
public enum MigrationPlanner {
    public static func checksum(_ data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    /// The migrations of `directory` for `flavour`, in version order.
    public static func load(directory: String, flavour: SchemaFlavour) throws -> [Migration] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw MigrationError("cannot read the migrations directory \(directory): \(error.localizedDescription)")
        }
        return try self.select(
            files: names.filter { $0.hasSuffix(".sql") }.sorted().map { name in
                let path = (directory as NSString).appendingPathComponent(name)
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw MigrationError("cannot read \(path)")
                }
                return (name, data)
            }, flavour: flavour)
    }

    /// Chooses, for each version, the file of the flavour (or the common file).
    public static func select(files: [(name: String, data: Data)], flavour: SchemaFlavour) throws -> [Migration] {
        struct Candidates {
            var name = ""
            var common: (String, Data)?
            var flavoured: [SchemaFlavour: (String, Data)] = [:]
        }
        var byVersion: [Int: Candidates] = [:]
        for (file, data) in files {
            var stem = String(file.dropLast(".sql".count))
            var fileFlavour: SchemaFlavour?
            for candidate in SchemaFlavour.allCases where stem.hasSuffix(".\(candidate.rawValue)") {
                fileFlavour = candidate
                stem = String(stem.dropLast(candidate.rawValue.count + 1))
            }
            guard let underscore = stem.firstIndex(of: "_"), let version = Int(stem[..<underscore]), version > 0 else {
                throw MigrationError("\(file): a migration file is named NNNN_name[.timescaledb|.postgres].sql")
            }
            let name = String(stem[stem.index(after: underscore)...])
            var entry = byVersion[version, default: Candidates(name: name)]
            guard entry.name == name else {
                throw MigrationError("\(file): version \(version) is already used by migration \"\(entry.name)\"")
            }
            if let fileFlavour {
                entry.flavoured[fileFlavour] = (file, data)
            } else {
                entry.common = (file, data)
            }
            byVersion[version] = entry
        }
        var migrations: [Migration] = []
        for (version, entry) in byVersion.sorted(by: { $0.key < $1.key }) {
            if entry.common != nil && !entry.flavoured.isEmpty {
                throw MigrationError("migration \(version) (\(entry.name)) has both a common file and flavour files; keep one kind")
            }
            if entry.common == nil && entry.flavoured.count != SchemaFlavour.allCases.count {
                let missing = SchemaFlavour.allCases.filter { entry.flavoured[$0] == nil }.map(\.rawValue)
                throw MigrationError("migration \(version) (\(entry.name)) lacks its \(missing.joined(separator: ", ")) file")
            }
            guard let (file, data) = entry.common ?? entry.flavoured[flavour] else { continue }
            guard let sql = String(data: data, encoding: .utf8) else { throw MigrationError("\(file) is not UTF-8") }
            migrations.append(Migration(version: version, name: entry.name, file: file, sql: sql, checksum: self.checksum(data)))
        }
        return migrations
    }

    /// What to apply, in order: the migrations above the last applied one, up to `target`. An applied
    /// migration whose file changed since, or that no longer exists, is an error.
    public static func pending(
        available: [Migration], applied: [AppliedMigration], target: Int? = nil
    ) throws -> [Migration] {
        for record in applied {
            guard let migration = available.first(where: { $0.version == record.version }) else {
                throw MigrationError(
                    "migration \(record.version) (\(record.name)) is recorded as applied but its file is missing from the migrations directory")
            }
            if migration.checksum != record.checksum {
                throw MigrationError(
                    "\(migration.file) changed after it was applied (checksum \(record.checksum.prefix(12))… recorded, \(migration.checksum.prefix(12))… now); "
                        + "applied migrations must not be edited — add a new migration instead")
            }
        }
        let appliedVersions = Set(applied.map(\.version))
        let highest = applied.map(\.version).max() ?? 0
        if let late = available.first(where: { $0.version < highest && !appliedVersions.contains($0.version) }) {
            throw MigrationError(
                "\(late.file) is older than the applied migration \(highest) but was never applied; give it a number above \(highest)")
        }
        if let target {
            guard target >= highest else {
                throw MigrationError("--target \(target) is below the applied version \(highest); migrations only go forward")
            }
            guard target == 0 || available.contains(where: { $0.version == target }) else {
                throw MigrationError("--target \(target): there is no migration \(target)")
            }
        }
        return available.filter { !appliedVersions.contains($0.version) && $0.version <= (target ?? Int.max) }
    }
}

/// What `tidegate migrate` did or would do.
public struct MigrationReport: Sendable {
    public var node: String
    public var flavour: SchemaFlavour
    public var alreadyApplied: Int
    public var applied: [Migration]
    public var dryRun: Bool
}

/// Applies migrations to the primary: each file in its own transaction, recorded in
/// `tidegate_schema_migrations`, one runner at a time (an advisory lock).
public enum MigrationRunner {
    /// The advisory lock every `tidegate migrate` takes (arbitrary, fixed).
    static let lockKey: Int64 = 7_233_884_151

    static let createTable = """
        CREATE TABLE IF NOT EXISTS tidegate_schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            flavour text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())
        """

    public static func run(
        config: TidegateConfig, directory: String, database: String, user: String?, dryRun: Bool, target: Int?,
        log: @escaping @Sendable (String) -> Void
    ) async throws -> MigrationReport {
        let primary = try await PrimaryConnection.connect(config: config, database: database, user: user)
        do {
            let report = try await self.migrate(
                server: primary.server, node: primary.node, directory: directory, dryRun: dryRun, target: target, log: log,
                rows: { _, sql in try await primary.rows(sql) })
            await primary.close()
            return report
        } catch {
            await primary.close()
            throw error
        }
    }

    private static func migrate(
        server: ServerConnection, node: String, directory: String, dryRun: Bool, target: Int?,
        log: @Sendable (String) -> Void, rows: (ServerConnection, String) async throws -> [[String?]]
    ) async throws -> MigrationReport {

        // TimescaleDB is usable when the server offers the extension and either the database has it
        // already or the server preloads its library (offered but not preloaded, CREATE EXTENSION fails).
        // The preloaded library's settings are visible to every user; shared_preload_libraries is not.
        let timescale = try await rows(
            server, """
                SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'timescaledb')
                   AND (EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'timescaledb')
                        OR current_setting('timescaledb.max_background_workers', true) IS NOT NULL)
                """)
        let flavour: SchemaFlavour = timescale.first?.first == "t" ? .timescaledb : .postgres
        let available = try MigrationPlanner.load(directory: directory, flavour: flavour)
        for migration in available {
            let analysis = try? QueryAnalyzer.analyze(migration.sql)
            if analysis?.kinds.contains(.transaction) == true {
                throw MigrationError("\(migration.file): transaction control (BEGIN/COMMIT…) is not allowed; each file runs in its own transaction")
            }
        }

        if !dryRun {
            guard try await rows(server, "SELECT pg_catalog.pg_try_advisory_lock(\(Self.lockKey))").first?.first == "t" else {
                throw MigrationError("another tidegate migrate is running against \(node) (advisory lock \(Self.lockKey)); try again when it is done")
            }
            _ = try await rows(server, Self.createTable)
        }
        let exists = try await rows(server, "SELECT to_regclass('tidegate_schema_migrations') IS NOT NULL").first?.first == "t"
        let applied = exists
            ? try await rows(server, "SELECT version, name, checksum, flavour FROM tidegate_schema_migrations ORDER BY version").map {
                AppliedMigration(version: Int($0[0] ?? "") ?? 0, name: $0[1] ?? "", checksum: $0[2] ?? "", flavour: $0[3] ?? "")
            } : []
        if let other = applied.first(where: { $0.flavour != flavour.rawValue }) {
            throw MigrationError(
                "migration \(other.version) was applied in the \(other.flavour) flavour but the server now offers \(flavour.rawValue); the flavours do not mix")
        }
        let pending = try MigrationPlanner.pending(available: available, applied: applied, target: target)
        var report = MigrationReport(node: node, flavour: flavour, alreadyApplied: applied.count, applied: [], dryRun: dryRun)
        if dryRun {
            report.applied = pending
            return report
        }
        for migration in pending {
            log("applying \(migration.file)")
            let name = migration.name.replacingOccurrences(of: "'", with: "''")
            let sql = """
                BEGIN;
                \(migration.sql)
                ;
                INSERT INTO tidegate_schema_migrations (version, name, checksum, flavour)
                VALUES (\(migration.version), '\(name)', '\(migration.checksum)', '\(flavour.rawValue)');
                COMMIT;
                """
            do {
                _ = try await rows(server, sql)
            } catch {
                _ = try? await rows(server, "ROLLBACK")
                throw MigrationError("\(migration.file) failed and was rolled back (nothing of it is applied): \(error)")
            }
            report.applied.append(migration)
        }
        _ = try? await rows(server, "SELECT pg_catalog.pg_advisory_unlock(\(Self.lockKey))")
        return report
    }
}
