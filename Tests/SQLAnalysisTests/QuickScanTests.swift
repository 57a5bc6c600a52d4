import Testing

@testable import SQLAnalysis

/// The quick scan must never say "no effect" for text the lexer would give an effect; it may send
/// anything it is unsure of to the lexer (nil).
@Suite struct QuickScanTests {
    func quick(_ sql: String) -> String? {
        Array(sql.utf8).withUnsafeBytes { SessionEffectClassifier.quickFirstWord($0) }
    }

    @Test func plainStatementsTakeTheQuickPath() {
        #expect(self.quick("SELECT abalance FROM pgbench_accounts WHERE aid = 42;") == "select")
        #expect(self.quick("  insert into t values (1)") == "insert")
        #expect(self.quick("UPDATE t SET x = 1 WHERE id = 2") == "update")
    }

    @Test func effectsAndDoubtsGoToTheLexer() {
        for sql in [
            "SET search_path = x", "reset all", "DISCARD ALL", "LISTEN ch", "prepare p as select 1",
            "DEALLOCATE ALL", "create temp table t (x int)", "declare c cursor with hold for select 1",
            "select pg_advisory_lock(1)", "select set_config('a', 'b', false)", "select 1; set x = 1",
            "select 'quoted ; set x = 1'", "/* c */ set x = 1", "-- c\nset x = 1", "select $$x$$", "",
            "   ",
        ] {
            #expect(self.quick(sql) == nil, "\(sql)")
        }
    }

    @Test func quickPathAgreesWithTheLexer() {
        for sql in ["select 1", "SELECT * FROM ticks WHERE symbol = 1;  ", "insert into t values (1)"] {
            guard let first = self.quick(sql) else { continue }
            let statements = SQLLexer.statements(in: sql)
            #expect(statements.count == 1)
            #expect(statements.first?.leadingWords.first == first)
            #expect(statements.first.map { SessionEffectClassifier.classify($0) } == SessionEffect.none)
        }
    }
}
