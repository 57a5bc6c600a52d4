import Testing

@testable import SQLAnalysis

@Suite struct RoutingHintTests {
    @Test func leadingCommentHints() {
        #expect(RoutingHint.parse("/* tidegate: route=primary */ SELECT 1") == RoutingHint(route: .primary))
        #expect(
            RoutingHint.parse("  /*tidegate: route=replica, region=eu-west max_lag=500ms*/select 1")
                == RoutingHint(route: .replica, region: "eu-west", maxLagSeconds: 0.5))
        #expect(RoutingHint.parse("/* TIDEGATE: max_lag=2s */ select") == RoutingHint(maxLagSeconds: 2))
        #expect(RoutingHint.parse("/* tidegate: max_lag=1min */ select")?.maxLagSeconds == 60)
        #expect(RoutingHint.parse("/* tidegate: max_lag=250 */ select")?.maxLagSeconds == 0.25)
    }

    @Test func onlyALeadingTidegateCommentCounts() {
        #expect(RoutingHint.parse("SELECT 1 /* tidegate: route=primary */") == nil)
        #expect(RoutingHint.parse("/* other: route=primary */ SELECT 1") == nil)
        #expect(RoutingHint.parse("-- tidegate: route=primary\nSELECT 1") == nil)
        #expect(RoutingHint.parse("/* tidegate: route=primary") == nil)
    }

    @Test func malformedValuesAreIgnored() {
        #expect(RoutingHint.parse("/* tidegate: route=sideways max_lag=soon bogus */ select 1") == RoutingHint())
        #expect(RoutingHint.parse("/* tidegate: max_lag=-1s */ select 1")?.maxLagSeconds == nil)
    }
}

@Suite struct RouteProfileTests {
    static let catalog: FunctionCatalog = {
        var catalog = FunctionCatalog(allowList: ["audit_peek"])
        catalog.add(schema: "pg_catalog", name: "now", volatility: "s")
        catalog.add(schema: "pg_catalog", name: "count", volatility: "i")
        catalog.add(schema: "pg_catalog", name: "nextval", volatility: "v")
        catalog.add(schema: "pg_catalog", name: "random", volatility: "v")
        catalog.add(schema: "public", name: "bump", volatility: "v")
        catalog.add(schema: "public", name: "audit_peek", volatility: "v")
        catalog.add(schema: "public", name: "price_at", volatility: "s")
        // An overload that is volatile makes the name unsafe.
        catalog.add(schema: "public", name: "mixed", volatility: "i")
        catalog.add(schema: "other", name: "mixed", volatility: "v")
        return catalog
    }()

    func readOnly(_ sql: String) -> Bool {
        RouteProfile(sql: sql).isReadOnly(isSafeFunction: Self.catalog.isSafe)
    }

    @Test func readsAndWrites() {
        #expect(self.readOnly("SELECT * FROM ticks WHERE symbol = 'AAPL'"))
        #expect(self.readOnly("SELECT count(*), now() FROM ticks"))
        #expect(self.readOnly("SHOW TimeZone"))
        #expect(self.readOnly("SET search_path = public; SELECT 1"))
        #expect(!self.readOnly("INSERT INTO ticks VALUES (1)"))
        #expect(!self.readOnly("UPDATE ticks SET price = 1"))
        #expect(!self.readOnly("CREATE TABLE t (x int)"))
        #expect(!self.readOnly("SELECT 1; DELETE FROM ticks"))
        #expect(!self.readOnly("SELECT * INTO copy_of_ticks FROM ticks"))
        #expect(!self.readOnly("BEGIN"))
        #expect(!self.readOnly("COPY ticks FROM STDIN"))
        #expect(!self.readOnly("LISTEN ticks"))
    }

    @Test func dataModifyingCTEsAndLockingClausesWrite() {
        #expect(!self.readOnly("WITH gone AS (DELETE FROM ticks RETURNING *) SELECT count(*) FROM gone"))
        #expect(!self.readOnly("SELECT * FROM ticks WHERE id = 1 FOR UPDATE"))
        #expect(!self.readOnly("SELECT * FROM ticks FOR SHARE SKIP LOCKED"))
        #expect(self.readOnly("WITH recent AS (SELECT * FROM ticks) SELECT count(*) FROM recent"))
    }

    @Test func functionsDecideByVolatility() {
        #expect(!self.readOnly("SELECT nextval('s')"))
        #expect(!self.readOnly("SELECT bump()"))
        #expect(!self.readOnly("SELECT mixed(1)"))
        #expect(self.readOnly("SELECT price_at('AAPL', now())"))
        #expect(self.readOnly("SELECT public.price_at('AAPL', now())"))
        // Built-in and configured allow-list.
        #expect(self.readOnly("SELECT random()"))
        #expect(self.readOnly("SELECT audit_peek()"))
        // Unknown to the catalog (created after it loaded, or misspelt): not provably safe.
        #expect(!self.readOnly("SELECT brand_new_function()"))
        #expect(!self.readOnly("SELECT x FROM generate_series(1, 3) x WHERE bump() > 0"))
    }

    @Test func readOnlyTransactions() {
        #expect(RouteProfile(sql: "BEGIN READ ONLY").beginsReadOnlyTransaction)
        #expect(RouteProfile(sql: "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").beginsReadOnlyTransaction)
        #expect(RouteProfile(sql: "BEGIN READ ONLY; SELECT 1; COMMIT").beginsReadOnlyTransaction)
        #expect(!RouteProfile(sql: "BEGIN READ WRITE").beginsReadOnlyTransaction)
        #expect(!RouteProfile(sql: "BEGIN").beginsReadOnlyTransaction)
        #expect(!RouteProfile(sql: "BEGIN READ ONLY; INSERT INTO t VALUES (1)").beginsReadOnlyTransaction)
    }

    @Test func parseErrorsGoToThePrimary() {
        let profile = RouteProfile(sql: "SELEC 1")
        #expect(profile.parseError)
        #expect(!profile.isReadOnly(isSafeFunction: { _ in true }))
    }

    @Test func hintTravelsWithTheProfile() {
        #expect(RouteProfile(sql: "/* tidegate: route=primary */ SELECT 1").hint?.route == .primary)
    }
}

@Suite struct RouteProfileMemoKeyTests {
    func key(_ sql: String) -> String? {
        RouteProfile.memoKey(Array(sql.utf8)).map { String(decoding: $0, as: UTF8.self) }
    }

    @Test func literalValuesAreMasked() {
        #expect(self.key("SELECT abalance FROM t WHERE aid = 42") == "SELECT abalance FROM t WHERE aid = 0")
        #expect(self.key("SELECT abalance FROM t WHERE aid = 7") == self.key("SELECT abalance FROM t WHERE aid = 123456"))
        #expect(self.key("select 'AAPL', 'it''s', 1.5e-3, .5") == "select '', '', 0, .0")
        #expect(self.key("select * from t where x = $1 and y = $12") == "select * from t where x = $1 and y = $12")
    }

    @Test func identifiersCommentsAndHintsAreKept() {
        #expect(self.key("select t1.c2 from t1") == "select t1.c2 from t1")
        #expect(self.key("select \"weird 'name\" from t") == "select \"weird 'name\" from t")
        #expect(self.key("/* tidegate: route=primary */ select 1") == "/* tidegate: route=primary */ select 0")
        #expect(self.key("select 1 -- it's 2\n, 3") == "select 0 -- it's 2\n, 0")
        #expect(self.key("/* a /* nested ' */ b */ select 1") == "/* a /* nested ' */ b */ select 0")
        #expect(self.key("select 1 for update") != self.key("select 1"))
    }

    @Test func ambiguousTextsAreNotMasked() {
        #expect(self.key("select E'\\' ; delete from t; --'") == nil)
        #expect(self.key("select $$it's$$") == nil)
        #expect(self.key("select $tag$x$tag$") == nil)
        #expect(self.key("select 'unterminated") == nil)
        #expect(self.key("select \"unterminated") == nil)
        #expect(self.key("/* unterminated") == nil)
    }
}

@Suite struct RouteProfileTransactionControlTests {
    @Test func transactionControlWritesNothingByItself() {
        #expect(RouteProfile(sql: "BEGIN").transactionControl)
        #expect(RouteProfile(sql: "COMMIT").transactionControl)
        #expect(RouteProfile(sql: "SAVEPOINT a; RELEASE a").transactionControl)
        #expect(!RouteProfile(sql: "BEGIN; INSERT INTO t VALUES (1)").transactionControl)
        #expect(!RouteProfile(sql: "SELECT 1").transactionControl)
    }
}
