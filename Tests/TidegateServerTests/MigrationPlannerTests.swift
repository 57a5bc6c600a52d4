import Foundation
import Testing

@testable import TidegateServer

@Suite struct MigrationPlannerTests {
    static func file(_ name: String, _ text: String) -> (name: String, data: Data) { (name, Data(text.utf8)) }

    static let files = [
        file("0001_tables.timescaledb.sql", "create table t (x int); select create_hypertable('t', 'x');"),
        file("0001_tables.postgres.sql", "create table t (x int) partition by range (x);"),
        file("0002_compat.sql", "create function f() returns int language sql as 'select 1';"),
        file("0010_rollups.postgres.sql", "create table r (x int);"),
        file("0010_rollups.timescaledb.sql", "create materialized view r as select 1;"),
    ]

    @Test func picksTheFlavourAndKeepsVersionOrder() throws {
        let postgres = try MigrationPlanner.select(files: Self.files, flavour: .postgres)
        #expect(postgres.map(\.file) == ["0001_tables.postgres.sql", "0002_compat.sql", "0010_rollups.postgres.sql"])
        #expect(postgres.map(\.version) == [1, 2, 10])
        #expect(postgres.map(\.name) == ["tables", "compat", "rollups"])
        let timescale = try MigrationPlanner.select(files: Self.files, flavour: .timescaledb)
        #expect(timescale.map(\.file) == ["0001_tables.timescaledb.sql", "0002_compat.sql", "0010_rollups.timescaledb.sql"])
        #expect(postgres[1].checksum == timescale[1].checksum)
        #expect(postgres[1].checksum == MigrationPlanner.checksum(Data("create function f() returns int language sql as 'select 1';".utf8)))
        #expect(postgres[1].checksum.count == 64)
    }

    @Test func badDirectoriesAreReported() {
        func problem(_ files: [(name: String, data: Data)]) -> String {
            do {
                _ = try MigrationPlanner.select(files: files, flavour: .postgres)
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        #expect(problem([Self.file("1-tables.sql", "")]).contains("is named NNNN_name"))
        #expect(problem([Self.file("0001_a.sql", ""), Self.file("0001_b.sql", "")]).contains("already used by migration \"a\""))
        #expect(problem([Self.file("0001_a.sql", ""), Self.file("0001_a.postgres.sql", "")]).contains("both a common file and flavour files"))
        #expect(problem([Self.file("0001_a.postgres.sql", "")]).contains("lacks its timescaledb file"))
    }

    @Test func pendingIsWhatIsAboveTheAppliedOnes() throws {
        let available = try MigrationPlanner.select(files: Self.files, flavour: .postgres)
        let first = AppliedMigration(version: 1, name: "tables", checksum: available[0].checksum, flavour: "postgres")
        #expect(try MigrationPlanner.pending(available: available, applied: []).map(\.version) == [1, 2, 10])
        #expect(try MigrationPlanner.pending(available: available, applied: [first]).map(\.version) == [2, 10])
        #expect(try MigrationPlanner.pending(available: available, applied: [first], target: 2).map(\.version) == [2])
        let all = available.map { AppliedMigration(version: $0.version, name: $0.name, checksum: $0.checksum, flavour: "postgres") }
        #expect(try MigrationPlanner.pending(available: available, applied: all).isEmpty)
    }

    @Test func editedMissingAndOutOfOrderMigrationsAreErrors() throws {
        let available = try MigrationPlanner.select(files: Self.files, flavour: .postgres)
        func problem(_ applied: [AppliedMigration], target: Int? = nil) -> String {
            do {
                _ = try MigrationPlanner.pending(available: available, applied: applied, target: target)
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        #expect(problem([.init(version: 1, name: "tables", checksum: "0000", flavour: "postgres")]).contains("changed after it was applied"))
        #expect(problem([.init(version: 7, name: "gone", checksum: "0000", flavour: "postgres")]).contains("its file is missing"))
        // 0002 was never applied, but 0010 was: 0002 came too late.
        let tenth = AppliedMigration(version: 10, name: "rollups", checksum: available[2].checksum, flavour: "postgres")
        let first = AppliedMigration(version: 1, name: "tables", checksum: available[0].checksum, flavour: "postgres")
        #expect(problem([first, tenth]).contains("older than the applied migration 10"))
        #expect(problem([first], target: 5).contains("there is no migration 5"))
        let second = AppliedMigration(version: 2, name: "compat", checksum: available[1].checksum, flavour: "postgres")
        #expect(problem([first, second], target: 1).contains("only go forward"))
    }

    @Test func theRepositorysMigrationsLoadInBothFlavours() throws {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("migrations").path
        for flavour in SchemaFlavour.allCases {
            let migrations = try MigrationPlanner.load(directory: directory, flavour: flavour)
            #expect(!migrations.isEmpty)
            #expect(migrations.allSatisfy { $0.file.hasSuffix(".\(flavour.rawValue).sql") || !$0.file.contains(".postgres.") })
        }
    }
}
