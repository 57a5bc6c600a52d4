import Testing

@testable import SQLAnalysis

@Suite struct SessionEffectClassifierTests {
    func effect(_ sql: String) -> SessionEffect {
        let effects = SessionEffectClassifier.effects(of: sql, keepNone: true)
        #expect(effects.count == 1, "expected one statement in \(sql)")
        return effects.first ?? .none
    }

    @Test func setForms() {
        #expect(self.effect("SET x = 1") == .set(name: "x", statement: "SET x = 1"))
        #expect(
            self.effect("set search_path to public, market")
                == .set(name: "search_path", statement: "set search_path to public, market")
        )
        #expect(
            self.effect("SET SESSION statement_timeout = '5s'")
                == .set(name: "statement_timeout", statement: "SET SESSION statement_timeout = '5s'")
        )
        #expect(self.effect("SET TIME ZONE 'UTC'") == .set(name: "timezone", statement: "SET TIME ZONE 'UTC'"))
        #expect(self.effect("SET TimeZone = 'UTC'") == .set(name: "timezone", statement: "SET TimeZone = 'UTC'"))
        #expect(
            self.effect("SET SESSION AUTHORIZATION alice")
                == .set(name: "session_authorization", statement: "SET SESSION AUTHORIZATION alice")
        )
        #expect(self.effect("SET ROLE reader") == .set(name: "role", statement: "SET ROLE reader"))
    }

    @Test func transactionScopedSetsHaveNoEffect() {
        #expect(self.effect("SET LOCAL x = 1") == SessionEffect.none)
        #expect(self.effect("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE") == SessionEffect.none)
        #expect(self.effect("SET CONSTRAINTS ALL DEFERRED") == SessionEffect.none)
        #expect(self.effect("SET") == SessionEffect.none)
        #expect(self.effect("SET SESSION") == SessionEffect.none)
    }

    @Test func resetForms() {
        #expect(self.effect("RESET ALL") == .resetAll)
        #expect(self.effect("reset all") == .resetAll)
        #expect(self.effect("RESET search_path") == .reset(name: "search_path"))
        #expect(self.effect("RESET TIME ZONE") == .reset(name: "timezone"))
        #expect(self.effect("RESET SESSION AUTHORIZATION") == .reset(name: "session_authorization"))
        #expect(self.effect("RESET") == SessionEffect.none)
    }

    @Test func discard() {
        #expect(self.effect("DISCARD ALL") == .discardAll)
        #expect(self.effect("discard all") == .discardAll)
        #expect(self.effect("DISCARD PLANS") == SessionEffect.none)
    }

    @Test func pinningStatements() {
        #expect(self.effect("LISTEN ticks") == .pin(reason: "LISTEN"))
        #expect(self.effect("PREPARE q(int) AS SELECT $1") == .pin(reason: "PREPARE"))
        #expect(self.effect("LOAD 'auto_explain'") == .pin(reason: "LOAD"))
        #expect(self.effect("CREATE TEMP TABLE t (x int)") == .pin(reason: "temporary table"))
        #expect(self.effect("CREATE TEMPORARY TABLE t (x int)") == .pin(reason: "temporary table"))
        #expect(self.effect("CREATE GLOBAL TEMPORARY TABLE t (x int)") == .pin(reason: "temporary table"))
        #expect(self.effect("CREATE OR REPLACE TEMP VIEW v AS SELECT 1") == .pin(reason: "temporary table"))
        #expect(self.effect("DECLARE c CURSOR WITH HOLD FOR SELECT 1") == .pin(reason: "WITH HOLD cursor"))
        #expect(self.effect("select pg_advisory_lock(1)") == .pin(reason: "advisory lock"))
        #expect(self.effect("SELECT pg_try_advisory_lock(1, 2)") == .pin(reason: "advisory lock"))
        #expect(self.effect("select set_config('search_path', 'x', false)") == .pin(reason: "set_config"))
    }

    @Test func nonPinningLookalikes() {
        #expect(self.effect("SELECT pg_advisory_xact_lock(1)") == SessionEffect.none)
        #expect(self.effect("SELECT pg_try_advisory_xact_lock(1)") == SessionEffect.none)
        #expect(self.effect("DECLARE c CURSOR FOR SELECT 1") == SessionEffect.none)
        #expect(self.effect("CREATE TABLE temp_prices (x int)") == SessionEffect.none)
        #expect(self.effect("UNLISTEN ticks") == SessionEffect.none)
        #expect(self.effect("SELECT 'listen', 'pg_advisory_lock(1)'") == SessionEffect.none)
        #expect(self.effect("SELECT $$set_config('a','b',false)$$") == SessionEffect.none)
        #expect(self.effect("SELECT * FROM prices WHERE symbol = 'SET x = 1'") == SessionEffect.none)
    }

    @Test func deallocate() {
        #expect(self.effect("DEALLOCATE ALL") == .deallocate(name: nil))
        #expect(self.effect("deallocate prepare all") == .deallocate(name: nil))
        #expect(self.effect("DEALLOCATE Stmt1") == .deallocate(name: "stmt1"))
        #expect(self.effect("DEALLOCATE PREPARE \"Stmt1\"") == .deallocate(name: "Stmt1"))
        #expect(self.effect("DEALLOCATE") == SessionEffect.none)
    }

    @Test func caseInsensitive() {
        #expect(self.effect("ListEn ticks") == .pin(reason: "LISTEN"))
        #expect(self.effect("Set Local x = 1") == SessionEffect.none)
        #expect(self.effect("sEt SeSsIoN X = 1") == .set(name: "x", statement: "sEt SeSsIoN X = 1"))
        #expect(self.effect("SELECT PG_ADVISORY_LOCK(1)") == .pin(reason: "advisory lock"))
    }

    @Test func commentsBeforeKeywords() {
        #expect(
            self.effect("/* app */ -- line\n SET x = 1") == .set(name: "x", statement: "/* app */ -- line\n SET x = 1")
        )
    }

    @Test func multiStatementStrings() {
        let sql = "BEGIN; SET search_path = a; SELECT 1; SET LOCAL y = 2; LISTEN q; RESET ALL; COMMIT"
        #expect(
            SessionEffectClassifier.effects(of: sql) == [
                .set(name: "search_path", statement: "SET search_path = a"), .pin(reason: "LISTEN"), .resetAll,
            ]
        )
        let all = SessionEffectClassifier.effects(of: sql, keepNone: true)
        #expect(all.count == 7)
        #expect(all[0] == SessionEffect.none)
        #expect(all[2] == SessionEffect.none)
        #expect(all[5] == .resetAll)
        // Quotes keep semicolons from splitting.
        #expect(
            SessionEffectClassifier.effects(of: "SET application_name = 'a;b'; SELECT 'x;y'", keepNone: true).count == 2
        )
    }

    @Test func emptyInput() {
        #expect(SessionEffectClassifier.effects(of: "").isEmpty)
        #expect(SessionEffectClassifier.effects(of: ";;", keepNone: true).isEmpty)
    }
}

@Suite struct SessionSettingsTests {
    func set(_ name: String, _ statement: String) -> SessionEffect { .set(name: name, statement: statement) }

    @Test func appliesInOrderAndReplaceMovesToTheEnd() {
        var settings = SessionSettings()
        #expect(settings.isEmpty)
        settings.apply(self.set("search_path", "SET search_path = a"))
        settings.apply(self.set("timezone", "SET TIME ZONE 'UTC'"))
        settings.apply(self.set("work_mem", "SET work_mem = '64MB'"))
        #expect(settings.statements == ["SET search_path = a", "SET TIME ZONE 'UTC'", "SET work_mem = '64MB'"])
        settings.apply(self.set("Search_Path", "SET search_path = b"))
        #expect(settings.statements == ["SET TIME ZONE 'UTC'", "SET work_mem = '64MB'", "SET search_path = b"])
        #expect(settings.statement(for: "SEARCH_PATH") == "SET search_path = b")
        #expect(settings.statement(for: "nope") == nil)
        #expect(settings.entries.map(\.name) == ["timezone", "work_mem", "search_path"])
    }

    @Test func resetRemovesOneAndResetAllRemovesEverything() {
        var settings = SessionSettings()
        settings.apply(self.set("a", "SET a = 1"))
        settings.apply(self.set("b", "SET b = 2"))
        settings.apply(.reset(name: "A"))
        #expect(settings.statements == ["SET b = 2"])
        settings.apply(.reset(name: "missing"))
        #expect(settings.statements == ["SET b = 2"])
        settings.apply(.none)
        settings.apply(.pin(reason: "LISTEN"))
        #expect(settings.statements == ["SET b = 2"])
        settings.apply(.resetAll)
        #expect(settings.isEmpty)
        settings.apply(self.set("c", "SET c = 3"))
        settings.apply(.discardAll)
        #expect(settings.isEmpty)
    }

    @Test func equalityComparesNamesAndStatementsInOrder() {
        var one = SessionSettings()
        var two = SessionSettings()
        one.apply(self.set("a", "SET a = 1"))
        one.apply(self.set("b", "SET b = 2"))
        two.apply(self.set("b", "SET b = 2"))
        two.apply(self.set("a", "SET a = 1"))
        #expect(one != two)
        two.apply(self.set("b", "SET b = 2"))
        #expect(one == two)
    }

    @Test func classifiedStatementsFeedSettings() {
        var settings = SessionSettings()
        for effect in SessionEffectClassifier.effects(
            of: "SET search_path = a; SET TIME ZONE 'UTC'; RESET search_path; SET timezone = 'Europe/Paris'"
        ) {
            settings.apply(effect)
        }
        #expect(settings.statements == ["SET timezone = 'Europe/Paris'"])
    }

    @Test func setStatementQuoting() {
        // Startup parameters are applied with set_config, which takes the value as one raw string, as
        // PostgreSQL applies a startup parameter.
        #expect(
            SessionSettings.setStatement(name: "application_name", value: "psql")
                == "SELECT pg_catalog.set_config('application_name', 'psql', false)")
        #expect(
            SessionSettings.setStatement(name: "application_name", value: "it's")
                == "SELECT pg_catalog.set_config('application_name', 'it''s', false)")
        #expect(SessionSettings.setStatement(name: "a'b", value: "''") == "SELECT pg_catalog.set_config('a''b', '''''', false)")
        #expect(SessionSettings.setStatement(name: "x", value: "") == "SELECT pg_catalog.set_config('x', '', false)")
        // The quoted statement is itself one statement to the lexer.
        let statement = SessionSettings.setStatement(name: "x;y", value: "'; DROP TABLE t; --")
        #expect(SQLLexer.statements(in: statement).count == 1)
        #expect(SessionEffectClassifier.effects(of: statement + "; SELECT 1", keepNone: true).count == 2)
    }

    @Test func parseOptionsForms() throws {
        let pairs = try #require(SessionSettings.parseOptions("-c a=b -c c=d"))
        #expect(pairs.map(\.0) == ["a", "c"])
        #expect(pairs.map(\.1) == ["b", "d"])
        let long = try #require(SessionSettings.parseOptions("--work-mem=64MB"))
        #expect(long.map(\.0) == ["work_mem"])
        #expect(long.map(\.1) == ["64MB"])
        let glued = try #require(SessionSettings.parseOptions("  -cstatement_timeout=5s\t--a=b  "))
        #expect(glued.map(\.0) == ["statement_timeout", "a"])
        #expect(glued.map(\.1) == ["5s", "b"])
        let equalsInValue = try #require(SessionSettings.parseOptions("-c x=a=b"))
        #expect(equalsInValue.map(\.1) == ["a=b"])
        #expect(SessionSettings.parseOptions("")?.isEmpty == true)
    }

    @Test func parseOptionsEscapes() throws {
        let escaped = try #require(SessionSettings.parseOptions("-c search_path=a\\ b -c x=back\\\\slash"))
        #expect(escaped.map(\.0) == ["search_path", "x"])
        #expect(escaped.map(\.1) == ["a b", "back\\slash"])
    }

    @Test(arguments: ["-c", "-c a", "foo", "-c a=b junk", "--", "--novalue", "-x a=b"])
    func parseOptionsInvalid(options: String) {
        #expect(SessionSettings.parseOptions(options) == nil)
    }
}
