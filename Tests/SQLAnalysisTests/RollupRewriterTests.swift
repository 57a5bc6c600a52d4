import Testing

@testable import SQLAnalysis

@Suite struct RollupRewriterTests {
    static let ohlcv = """
        SELECT time_bucket('5 minutes', ts) AS bucket, first(price, ts) AS open, max(price) AS high, min(price) AS low,
               last(price, ts) AS close, sum(size) AS volume, count(*) AS trades
        FROM ticks WHERE symbol = 'AAPL' AND ts >= '2026-11-02 14:30+00' AND ts < '2026-11-02 21:00+00'
        GROUP BY 1 ORDER BY 1
        """

    @Test func intervalWidths() {
        #expect(RollupRewriter.intervalMicros("5 minutes") == 300_000_000)
        #expect(RollupRewriter.intervalMicros("1 hour 30 minutes") == 5_400_000_000)
        #expect(RollupRewriter.intervalMicros("15min") == 900_000_000)
        #expect(RollupRewriter.intervalMicros("1 DAY") == 86_400_000_000)
        #expect(RollupRewriter.intervalMicros("2 weeks") == 1_209_600_000_000)
        #expect(RollupRewriter.intervalMicros("1 month") == nil)
        #expect(RollupRewriter.intervalMicros("00:05:00") == nil)
        #expect(RollupRewriter.intervalMicros("-5 minutes") == nil)
        #expect(RollupRewriter.intervalMicros("0 minutes") == nil)
        #expect(RollupRewriter.intervalMicros("5") == nil)
        #expect(RollupRewriter.intervalMicros("") == nil)
    }

    @Test func choosesTheCoarsestRollupThatDividesTheWidth() {
        func rollup(_ width: String) -> String? {
            let sql = "SELECT time_bucket('\(width)', ts), max(price) FROM ticks WHERE symbol = 'A' GROUP BY 1"
            if case .rewritten(_, let rollup) = RollupRewriter.rewrite(sql) { return rollup }
            return nil
        }
        #expect(rollup("1 minute") == "bars_1m")
        #expect(rollup("2 minutes") == "bars_1m")
        #expect(rollup("5 minutes") == "bars_5m")
        #expect(rollup("10 minutes") == "bars_5m")
        #expect(rollup("30 minutes") == "bars_15m")
        #expect(rollup("1 hour") == "bars_1h")
        #expect(rollup("4 hours") == "bars_1h")
        #expect(rollup("1 day") == "bars_1d")
        #expect(rollup("1 week") == "bars_1d")
        #expect(rollup("90 seconds") == nil)
        #expect(rollup("30 seconds") == nil)
        #expect(rollup("1 month") == nil)
    }

    @Test func rewritesOHLCVIntoRollupAndRawEdges() throws {
        let result = RollupRewriter.rewrite(Self.ohlcv)
        guard case .rewritten(let sql, let rollup) = result else {
            Issue.record("not rewritten: \(result)")
            return
        }
        #expect(rollup == "bars_5m")
        // The rewritten text parses, reads the rollup and the raw edges, and keeps names and order.
        #expect(throws: Never.self) { try QueryAnalyzer.analyze(sql) }
        let analysis = try QueryAnalyzer.analyze(sql)
        #expect(analysis.relationsRead == ["bars_5m", "ticks"])
        #expect(sql.contains("tidegate_rollup_watermark('bars_5m'::regclass, tg_lo.lo)"))
        #expect(sql.contains("tidegate_rollup_start('5 minutes'::interval, CAST('2026-11-02 14:30+00' AS timestamptz), true)"))
        #expect(sql.contains("tidegate_rollup_end('5 minutes'::interval, CAST('2026-11-02 21:00+00' AS timestamptz), false)"))
        #expect(sql.contains("first(tg.open, tg.ts) AS \"open\""))
        #expect(sql.contains("sum(tg.trade_count)::bigint AS trades"))
        #expect(sql.contains("t.symbol = 'AAPL'") && sql.contains("b.symbol = 'AAPL'"))
        #expect(sql.hasSuffix("ORDER BY 1"))
    }

    @Test func defaultOutputNamesFollowPostgres() {
        let sql = RollupRewriter.rewrite(
            "SELECT symbol, time_bucket('1 hour', ts), count(*), avg(size), first(price, ts) FROM ticks GROUP BY 2, 1"
        ).sql
        #expect(sql?.contains("tg.symbol AS symbol") == true)
        #expect(sql?.contains("time_bucket('1 hour', tg.ts) AS time_bucket") == true)
        #expect(sql?.contains("sum(tg.trade_count)::bigint AS \"count\"") == true)
        #expect(sql?.contains("(sum(tg.volume)::numeric / sum(tg.trade_count)::numeric) AS \"avg\"") == true)
        #expect(sql?.contains("GROUP BY time_bucket('1 hour', tg.ts), tg.symbol") == true)
    }

    @Test func parametersAliasesAndBoundsForms() {
        let sql = RollupRewriter.rewrite(
            """
            SELECT time_bucket('15 minutes', t.ts) b, max(t.price) FROM ticks t
            WHERE t.symbol IN ($1, $2) AND t.ts > $3 AND $4 >= t.ts GROUP BY b ORDER BY b DESC LIMIT $5
            """
        ).sql
        #expect(sql != nil)
        #expect(sql?.contains("tidegate_rollup_start('15 minutes'::interval, CAST($3 AS timestamptz), false)") == true)
        #expect(sql?.contains("tidegate_rollup_end('15 minutes'::interval, CAST($4 AS timestamptz), true)") == true)
        #expect(sql?.contains("t.symbol IN ($1, $2)") == true)
        #expect(sql?.contains("t.ts <= $4") == true)
        #expect(sql?.contains("ORDER BY b DESC") == true)
        #expect(sql?.hasSuffix("LIMIT $5") == true)

        let between = RollupRewriter.rewrite(
            "SELECT time_bucket('1 day', ts), sum(size) FROM ticks WHERE ts BETWEEN now() - interval '30 days' AND now() GROUP BY 1"
        ).sql
        #expect(between?.contains("t.ts BETWEEN (now() - CAST('30 days' AS pg_catalog.interval)) AND now()") == true)
    }

    @Test func leavesOtherQueriesAlone() {
        func reason(_ sql: String) -> String? {
            if case .unchanged(let reason) = RollupRewriter.rewrite(sql) { return reason }
            return nil
        }
        #expect(reason("SELECT * FROM ticks") != nil)
        #expect(reason("SELECT max(price) FROM ticks") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM quotes GROUP BY 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(size) FROM ticks GROUP BY 1")?.contains("max") == true)
        #expect(reason("SELECT time_bucket('5 minutes', ts), avg(price) FROM ticks GROUP BY 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), count(DISTINCT symbol) FROM ticks GROUP BY 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM ticks WHERE exchange = 'X' GROUP BY 1")?
            .contains("exchange") == true)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM ticks WHERE ts > now() - random() * interval '1 day' GROUP BY 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM ticks GROUP BY 1 HAVING max(price) > 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts, '2000-01-01'::timestamptz), max(price) FROM ticks GROUP BY 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts) AS ts, max(price) FROM ticks GROUP BY ts") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM ticks GROUP BY 1, exchange") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM ticks WHERE ts > 'a\\b' GROUP BY 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM ticks GROUP BY 1; SELECT 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM ONLY ticks GROUP BY 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM ticks, quotes GROUP BY 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM ticks GROUP BY 1 ORDER BY max(price)") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM ticks GROUP BY 1 ORDER BY time_bucket('1 hour', ts)") != nil)
        #expect(reason("SELECT symbol, time_bucket('5 minutes', ts), max(price) FROM ticks GROUP BY 2") != nil)
        #expect(reason("WITH x AS (SELECT 1) SELECT time_bucket('5 minutes', ts), max(price) FROM ticks GROUP BY 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) FROM ticks GROUP BY 1 FOR UPDATE") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price) OVER () FROM ticks GROUP BY 1") != nil)
        #expect(reason("not sql at all") == "does not parse")
        // first/last need one instrument per group: a bar has its bucket's start, not its trades' times.
        #expect(reason("SELECT time_bucket('5 minutes', ts), last(price, ts) FROM ticks GROUP BY 1")?.contains("first/last") == true)
        #expect(reason("SELECT time_bucket('5 minutes', ts), first(price, ts) FROM ticks WHERE symbol IN ('A', 'B') GROUP BY 1") != nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), first(price, ts) FROM ticks WHERE symbol IN ('A') GROUP BY 1") == nil)
        #expect(reason("SELECT time_bucket('5 minutes', ts), max(price), count(*) FROM ticks GROUP BY 1") == nil)
    }

    @Test func quotesNamesAndLiterals() {
        let sql = RollupRewriter.rewrite(
            "SELECT time_bucket('5 minutes', ts) AS \"Bucket\", max(price) AS \"a\"\"b\" FROM ticks WHERE symbol = 'O''Neil' GROUP BY 1"
        ).sql
        #expect(sql?.contains("AS \"Bucket\"") == true)
        #expect(sql?.contains("AS \"a\"\"b\"") == true)
        #expect(sql?.contains("'O''Neil'") == true)
    }

    @Test func configuredColumns() {
        var schema = RollupSchema(relation: "trades", timeColumn: "at", instrumentColumn: "ticker")
        schema.columns = ["at", "ticker", "price", "size"]
        let sql = RollupRewriter.rewrite(
            "SELECT time_bucket('1 hour', at), max(price) FROM trades WHERE ticker = 'A' AND at >= '2026-01-01' GROUP BY 1",
            schema: schema
        ).sql
        #expect(sql?.contains("FROM trades t WHERE t.ticker = 'A' AND t.at >= '2026-01-01'") == true)
        #expect(sql?.contains("b.symbol = 'A'") == true)
    }
}
