import Testing

@testable import SQLAnalysis

@Suite struct CacheAnalysisTests {
    static let relations: [String: MarketRelation] = [
        "ticks": MarketRelation(name: "ticks", timeColumn: "ts", instrumentColumn: "symbol"),
        "bars_1m": MarketRelation(name: "bars_1m", timeColumn: "bucket", instrumentColumn: "symbol"),
    ]

    func analyze(_ sql: String) -> CacheProfile { CacheAnalyzer.analyze(sql, relations: Self.relations) }

    @Test func ohlcvWithParametersAndAnInterval() {
        let profile = self.analyze(
            """
            SELECT time_bucket('1 minute', ts) AS bucket, first(price, ts), max(price), min(price), last(price, ts), sum(size)
            FROM ticks WHERE symbol = $1 AND ts >= $2 AND ts < $2::timestamptz + interval '1 day' GROUP BY 1 ORDER BY 1
            """)
        #expect(profile.isCacheable)
        #expect(profile.parameterCount == 2)
        #expect(profile.functions == ["first", "last", "max", "min", "sum", "time_bucket"])
        #expect(!profile.fingerprint.isEmpty)
        let dependency = profile.dependencies.first!
        #expect(dependency.relation == "ticks")
        #expect(dependency.instruments == [.parameter(1)])
        #expect(dependency.lowerBounds == [TimeBound(value: .parameter(2), inclusive: true)])
        #expect(
            dependency.upperBounds
                == [TimeBound(value: .parameter(2), offsetMicros: 86_400_000_000, slackMicros: 3 * 3_600_000_000, inclusive: false)])
    }

    @Test func literalsBetweenInAndFlippedComparisons() {
        let profile = self.analyze(
            "SELECT * FROM ticks t WHERE t.symbol IN ('AAPL', 'MSFT') AND ts BETWEEN '2026-11-02 14:30+00' AND '2026-11-02 21:00+00' AND '2026-11-02 15:00Z' < t.ts")
        let dependency = profile.dependencies.first!
        #expect(dependency.instruments == [.literal("AAPL"), .literal("MSFT")])
        #expect(dependency.lowerBounds.count == 2)
        #expect(dependency.lowerBounds.contains(TimeBound(value: .literal("2026-11-02 15:00Z"), inclusive: false)))
        #expect(dependency.upperBounds == [TimeBound(value: .literal("2026-11-02 21:00+00"), inclusive: true)])
    }

    @Test func conditionsUnderOrAndOtherColumnsAreIgnored() {
        let profile = self.analyze("SELECT * FROM ticks WHERE (symbol = 'A' OR symbol = 'B') AND price > 10 AND other.ts > '2026-01-01'")
        #expect(profile.isCacheable)
        #expect(profile.dependencies.first!.isUnbounded)
        // An alias that is not the relation's.
        #expect(self.analyze("SELECT * FROM ticks t WHERE x.symbol = 'A'").dependencies.first!.instruments == nil)
    }

    @Test func joinsAndSubqueriesDependOnWholeRelations() {
        let profile = self.analyze(
            "SELECT * FROM ticks t JOIN bars_1m b ON b.symbol = t.symbol WHERE t.symbol = 'A' AND t.ts > '2026-01-01Z'")
        #expect(profile.isCacheable)
        #expect(profile.dependencies.map(\.relation) == ["bars_1m", "ticks"])
        #expect(profile.dependencies.allSatisfy { $0.isUnbounded })
        let sub = self.analyze("SELECT * FROM ticks WHERE symbol = 'A' AND price > (SELECT avg(price) FROM ticks)")
        #expect(sub.dependencies.first!.isUnbounded)
        let cte = self.analyze("WITH recent AS (SELECT * FROM ticks WHERE symbol = 'A') SELECT count(*) FROM recent")
        #expect(cte.isCacheable)
        #expect(cte.dependencies.map(\.relation) == ["ticks"])
    }

    @Test func whatIsNeverCached() {
        let refused: [(String, String)] = [
            ("SELECT * FROM ticks FOR UPDATE", "locking"),
            ("SELECT * INTO copy FROM ticks", "INTO"),
            ("SELECT * FROM accounts", "accounts"),
            ("SELECT 1", "reads no"),
            ("SELECT * FROM ticks WHERE ts > now() - interval '1 hour'", ""),
            ("SELECT * FROM ticks WHERE ts > current_timestamp", "clock"),
            ("SELECT * FROM ticks WHERE ts::date = current_date", "clock"),
            ("SELECT * FROM ticks TABLESAMPLE SYSTEM (1)", "TABLESAMPLE"),
            ("WITH d AS (DELETE FROM ticks RETURNING *) SELECT * FROM d", "data-modifying"),
            ("INSERT INTO ticks VALUES (1)", "single SELECT"),
            ("SELECT 1 FROM ticks; SELECT 2 FROM ticks", "single SELECT"),
            ("SELEC nothing", "parse"),
        ]
        for (sql, reason) in refused {
            let profile = self.analyze(sql)
            if reason.isEmpty {
                // now() is a function call: the catalog check refuses it (stable, moves with the clock).
                #expect(profile.functions.contains("now"), "\(sql)")
                #expect(FunctionCatalog.cacheUnsafeStable.contains("now"))
            } else {
                #expect(!profile.isCacheable, "\(sql)")
                #expect(profile.refusal?.contains(reason) == true, "\(sql): \(profile.refusal ?? "cacheable")")
            }
        }
    }

    @Test func hints() {
        let profile = self.analyze("/* tidegate: max_staleness=2s */ SELECT * FROM ticks WHERE symbol = 'A'")
        #expect(profile.maxStalenessSeconds == 2)
        #expect(self.analyze("/* tidegate: cache=off */ SELECT * FROM ticks").hintOff)
    }

    @Test func intervals() {
        #expect(CacheAnalyzer.parseInterval("90 minutes")! == (90 * 60_000_000, 0))
        #expect(CacheAnalyzer.parseInterval("1 day 2 hours")! == (86_400_000_000 + 7_200_000_000, 3 * 3_600_000_000))
        #expect(CacheAnalyzer.parseInterval("1 month") == nil)
        #expect(CacheAnalyzer.parseInterval("soon") == nil)
    }

    @Test func cacheSafetyOfFunctions() {
        var catalog = FunctionCatalog(allowList: [])
        catalog.add(schema: "pg_catalog", name: "date_trunc", volatility: "s")
        catalog.add(schema: "pg_catalog", name: "now", volatility: "s")
        catalog.add(schema: "pg_catalog", name: "max", volatility: "i")
        catalog.add(schema: "pg_catalog", name: "random", volatility: "v")
        catalog.add(schema: "public", name: "time_bucket", volatility: "i")
        catalog.add(schema: "public", name: "latest_price", volatility: "s")
        #expect(catalog.isCacheSafe("date_trunc", allowed: []))
        #expect(catalog.isCacheSafe("max", allowed: []))
        #expect(catalog.isCacheSafe("time_bucket", allowed: []))
        #expect(!catalog.isCacheSafe("now", allowed: []))
        #expect(!catalog.isCacheSafe("random", allowed: []))
        // A stable function of the user's may read other tables: only when the config allows it.
        #expect(!catalog.isCacheSafe("latest_price", allowed: []))
        #expect(catalog.isCacheSafe("latest_price", allowed: ["latest_price"]))
        #expect(!catalog.isCacheSafe("unknown_function", allowed: []))
    }
}
