import Testing

@testable import SQLAnalysis

@Suite struct SQLLexerTests {
    func texts(_ sql: String) -> [String] { SQLLexer.statements(in: sql).map(\.text) }

    @Test func splitsOnSemicolonsAndTrims() {
        #expect(self.texts("SELECT 1; SELECT 2 ;\n  SELECT 3") == ["SELECT 1", "SELECT 2", "SELECT 3"])
    }

    @Test func emptyStatementsAreDropped() {
        #expect(self.texts(";;  ; SELECT 1;;") == ["SELECT 1"])
        #expect(self.texts("").isEmpty)
        #expect(self.texts("   \n\t ").isEmpty)
        #expect(self.texts("-- only a comment").isEmpty)
        #expect(self.texts("/* only */ ; /* comments */").isEmpty)
    }

    @Test func semicolonInsideStringLiteral() {
        #expect(self.texts("SELECT 'a;b'; SELECT 2") == ["SELECT 'a;b'", "SELECT 2"])
        // A doubled quote stays inside the literal.
        #expect(self.texts("SELECT 'it''s; fine'; SELECT 2") == ["SELECT 'it''s; fine'", "SELECT 2"])
    }

    @Test func backslashEscapesOnlyInEStrings() {
        // E'…' : \' does not end the literal.
        #expect(self.texts("SELECT E'a\\';b'; SELECT 2") == ["SELECT E'a\\';b'", "SELECT 2"])
        #expect(self.texts("SELECT e'\\\\'; SELECT 2") == ["SELECT e'\\\\'", "SELECT 2"])
        // Standard strings: a backslash is an ordinary character and the quote ends the literal.
        #expect(self.texts("SELECT 'a\\'; SELECT 2") == ["SELECT 'a\\'", "SELECT 2"])
    }

    @Test func semicolonInsideQuotedIdentifier() {
        #expect(self.texts("SELECT 1 AS \"quoted;ident\"; SELECT 2") == ["SELECT 1 AS \"quoted;ident\"", "SELECT 2"])
        #expect(self.texts("SELECT \"a\"\"b;\"; SELECT 2") == ["SELECT \"a\"\"b;\"", "SELECT 2"])
    }

    @Test func dollarQuotes() {
        #expect(self.texts("SELECT $$a;b$$; SELECT 2") == ["SELECT $$a;b$$", "SELECT 2"])
        let function = "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql"
        #expect(self.texts(function + "; SELECT f()") == [function, "SELECT f()"])
        // A different tag inside does not close the quote.
        #expect(self.texts("SELECT $a$ x $b$ ; $b$ y $a$; SELECT 2") == ["SELECT $a$ x $b$ ; $b$ y $a$", "SELECT 2"])
        // An unterminated dollar quote runs to the end.
        #expect(self.texts("SELECT $$ never; closed") == ["SELECT $$ never; closed"])
    }

    @Test func positionalParametersAreNotDollarQuotes() {
        #expect(self.texts("SELECT $1; SELECT $2, $3") == ["SELECT $1", "SELECT $2, $3"])
        #expect(self.texts("SELECT $1::int + $2; SELECT 'x'") == ["SELECT $1::int + $2", "SELECT 'x'"])
    }

    @Test func dollarInsideIdentifierIsNotAQuote() {
        #expect(self.texts("SELECT a$b$c FROM t; SELECT 2") == ["SELECT a$b$c FROM t", "SELECT 2"])
    }

    @Test func lineComments() {
        #expect(self.texts("SELECT 1 -- not here; no\n; SELECT 2") == ["SELECT 1 -- not here; no", "SELECT 2"])
        #expect(self.texts("SELECT 1 - -2; SELECT 3") == ["SELECT 1 - -2", "SELECT 3"])
    }

    @Test func nestedBlockComments() {
        #expect(
            self.texts("SELECT /* a /* b; */ still; */ 1; SELECT 2") == [
                "SELECT /* a /* b; */ still; */ 1", "SELECT 2",
            ]
        )
        #expect(self.texts("SELECT 1 /* unterminated; SELECT 2") == ["SELECT 1 /* unterminated; SELECT 2"])
    }

    @Test func leadingWordsSkipCommentsAndAreLowerCased() {
        let statement = SQLLexer.statements(in: "/* hint */ -- x\n  SeT   Search_Path TO public, other")[0]
        #expect(statement.leadingWords == ["set", "search_path", "to", "public"])
    }

    @Test func leadingWordsIgnoreStringsButKeepQuotedIdentifiers() {
        // A string literal is not a word; a quoted identifier is one (SET "TimeZone" names a setting).
        let statement = SQLLexer.statements(in: "SELECT 'listen' , \"Prepare\" , x")[0]
        #expect(statement.leadingWords == ["select", "prepare", "x"])
    }

    @Test func withHoldDetection() {
        #expect(SQLLexer.statements(in: "DECLARE c CURSOR WITH HOLD FOR SELECT 1")[0].hasWithHold)
        #expect(SQLLexer.statements(in: "declare c cursor with /* c */ hold for select 1")[0].hasWithHold)
        #expect(!SQLLexer.statements(in: "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1")[0].hasWithHold)
        #expect(!SQLLexer.statements(in: "DECLARE c CURSOR FOR SELECT 'with hold'")[0].hasWithHold)
        // The flag is per statement.
        let two = SQLLexer.statements(in: "DECLARE c CURSOR WITH HOLD FOR SELECT 1; SELECT 1")
        #expect(two.map(\.hasWithHold) == [true, false])
    }

    @Test func functionMentions() {
        let statements = SQLLexer.statements(
            in: "SELECT pg_advisory_lock(1); SELECT PG_TRY_ADVISORY_LOCK_SHARED(2); SELECT pg_advisory_xact_lock(3); "
                + "SELECT set_config('a', 'b', false); SELECT 'pg_advisory_lock(1)'"
        )
        #expect(statements.map(\.mentionsAdvisoryLock) == [true, true, false, false, false])
        #expect(statements.map(\.mentionsSetConfig) == [false, false, false, true, false])
    }

    @Test func nonASCIIText() {
        #expect(self.texts("SELECT 'ü;é'; SELECT \"日本;\"; SELECT 3") == ["SELECT 'ü;é'", "SELECT \"日本;\"", "SELECT 3"])
        #expect(SQLLexer.statements(in: "SELECT größe FROM t")[0].leadingWords == ["select", "größe", "from", "t"])
    }

    @Test func unterminatedQuotesRunToTheEnd() {
        #expect(self.texts("SELECT 'abc; SELECT 2") == ["SELECT 'abc; SELECT 2"])
        #expect(self.texts("SELECT \"abc; SELECT 2") == ["SELECT \"abc; SELECT 2"])
        #expect(self.texts("SELECT E'abc\\") == ["SELECT E'abc\\"])
    }
}
