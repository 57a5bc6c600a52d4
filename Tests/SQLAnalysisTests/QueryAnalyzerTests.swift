import Testing

@testable import SQLAnalysis

@Suite struct QueryAnalyzerTests {
    func analyze(_ sql: String) throws -> QueryAnalysis { try QueryAnalyzer.analyze(sql) }

    @Test func selectReadsItsRelationsAndCallsItsFunctions() throws {
        let analysis = try self.analyze("SELECT a, now(), pg_catalog.lower(b) FROM t JOIN market.u ON true WHERE x = my_fn(1)")
        #expect(analysis.kinds == [.read])
        #expect(analysis.relationsRead == ["t", "market.u"])
        #expect(analysis.relationsWritten.isEmpty)
        #expect(analysis.functions == ["now", "lower", "my_fn"])
        #expect(analysis.isProvablyReadOnly { ["now", "lower"].contains($0) } == false)
        #expect(analysis.isProvablyReadOnly { _ in true })
    }

    @Test func writesAndTheirSources() throws {
        let insert = try self.analyze("INSERT INTO ticks (ts, price) SELECT ts, price FROM staging")
        #expect(insert.kinds == [.write])
        #expect(insert.relationsWritten == ["ticks"])
        #expect(insert.relationsRead == ["staging"])
        let update = try self.analyze("UPDATE t SET a = 1 FROM u WHERE t.id = u.id")
        #expect(update.relationsWritten == ["t"])
        #expect(update.relationsRead == ["u"])
        #expect(try self.analyze("DELETE FROM s.t WHERE id = 1").relationsWritten == ["s.t"])
        #expect(try self.analyze("SELECT * INTO new_t FROM t").kinds == [.write])
    }

    @Test func dataModifyingCTEAndLockingClausesAreNotReadOnly() throws {
        let cte = try self.analyze("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x")
        #expect(cte.kinds == [.read])
        #expect(cte.hasDataModifyingCTE)
        #expect(cte.relationsWritten == ["t"])
        #expect(!cte.relationsRead.contains("x"))
        #expect(!cte.isProvablyReadOnly { _ in true })
        let plainCTE = try self.analyze("WITH x AS (SELECT 1 AS a) SELECT * FROM x")
        #expect(!plainCTE.hasDataModifyingCTE)
        #expect(plainCTE.isProvablyReadOnly { _ in true })
        let locking = try self.analyze("SELECT * FROM t WHERE id = 1 FOR UPDATE")
        #expect(locking.hasLockingClause)
        #expect(!locking.isProvablyReadOnly { _ in true })
    }

    @Test func statementKinds() throws {
        #expect(try self.analyze("BEGIN").kinds == [.transaction])
        #expect(try self.analyze("BEGIN READ ONLY").transactionReadOnly == true)
        #expect(try self.analyze("START TRANSACTION READ WRITE").transactionReadOnly == false)
        #expect(try self.analyze("BEGIN").transactionReadOnly == nil)
        #expect(try self.analyze("SET search_path = x").kinds == [.set])
        #expect(try self.analyze("SHOW TimeZone").kinds == [.show])
        #expect(try self.analyze("COPY t FROM STDIN").kinds == [.copyIn])
        #expect(try self.analyze("COPY t FROM STDIN").relationsWritten == ["t"])
        #expect(try self.analyze("COPY t TO STDOUT").kinds == [.copyOut])
        #expect(try self.analyze("COPY (SELECT 1) TO STDOUT").kinds == [.copyOut])
        #expect(try self.analyze("CREATE TABLE z (a int)").kinds == [.ddl])
        #expect(try self.analyze("ALTER TABLE z ADD COLUMN b int").kinds == [.ddl])
        #expect(try self.analyze("TRUNCATE a, b").relationsWritten == ["a", "b"])
        #expect(try self.analyze("EXPLAIN SELECT 1").kinds == [.read])
        #expect(try self.analyze("EXPLAIN ANALYZE DELETE FROM t").kinds == [.write])
        #expect(try self.analyze("VACUUM t").kinds == [.utility])
        #expect(try self.analyze("SELECT 1; INSERT INTO t VALUES (1)").kinds == [.read, .write])
    }

    @Test func parseErrorsCarryMessageAndPosition() {
        #expect(throws: QueryParseError(message: "syntax error at or near \"selec\"", cursorPosition: 1)) {
            try QueryAnalyzer.analyze("selec 1")
        }
        // The parser stays usable after an error.
        #expect((try? QueryAnalyzer.analyze("SELECT 1"))?.kinds == [.read])
    }

    @Test func fingerprintAndNormalize() {
        let a = QueryAnalyzer.fingerprint("SELECT * FROM ticks WHERE symbol = 'AAPL' AND ts > now()")
        let b = QueryAnalyzer.fingerprint("select *   from ticks where symbol = 'MSFT' and ts > now()")
        #expect(a != nil)
        #expect(a == b)
        #expect(a != QueryAnalyzer.fingerprint("SELECT * FROM quotes WHERE symbol = 'AAPL'"))
        #expect(QueryAnalyzer.normalize("SELECT * FROM t WHERE a = 1 AND b = 'x'") == "SELECT * FROM t WHERE a = $1 AND b = $2")
        #expect(QueryAnalyzer.fingerprint("selec 1") == nil)
    }
}
