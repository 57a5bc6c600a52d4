import Foundation
import Histogram
import LoadtestCore
import Testing

@Suite struct RandomTests {
    @Test func sameSeedSameStream() {
        var a = SeededGenerator(seed: 42, stream: 3)
        var b = SeededGenerator(seed: 42, stream: 3)
        var c = SeededGenerator(seed: 42, stream: 4)
        let first = (0..<8).map { _ in a.next() }
        #expect(first == (0..<8).map { _ in b.next() })
        #expect(first != (0..<8).map { _ in c.next() })
    }

    @Test func zipfFollowsItsWeights() {
        let zipf = ZipfDistribution(count: 50, exponent: 1.1)
        // P(k) ∝ 1/k^1.1: rank 0 over rank 1 is 2^1.1.
        #expect(abs(zipf.probability(0) / zipf.probability(1) - pow(2, 1.1)) < 1e-9)
        #expect(abs((0..<50).map(zipf.probability).reduce(0, +) - 1) < 1e-9)
        var generator = SeededGenerator(seed: 7)
        var counts = Array(repeating: 0, count: 50)
        let draws = 200_000
        for _ in 0..<draws { counts[zipf.sample(using: &generator)] += 1 }
        for rank in [0, 1, 9, 49] {
            let expected = zipf.probability(rank) * Double(draws)
            // Within 5 standard deviations of a binomial count.
            #expect(abs(Double(counts[rank]) - expected) < 5 * expected.squareRoot() + 1, "rank \(rank): \(counts[rank]) vs \(expected)")
        }
    }

    @Test func weightedChoiceHonoursZeroWeights() {
        let choice = WeightedChoice(weights: [0, 3, 1])
        var generator = SeededGenerator(seed: 1)
        var counts = [0, 0, 0]
        for _ in 0..<40_000 { counts[choice.sample(using: &generator)] += 1 }
        #expect(counts[0] == 0)
        #expect(abs(Double(counts[1]) / Double(counts[2]) - 3) < 0.2)
    }
}

@Suite struct ConnectionSpecTests {
    @Test func keywordString() throws {
        let spec = try ConnectionSpec.parse("host=10.0.0.5 port=6432 user=api password='' dbname=market", environment: [:])
        #expect(spec.host == "10.0.0.5")
        #expect(spec.port == 6432)
        #expect(spec.user == "api")
        #expect(spec.database == "market")
        #expect(spec.password == "")
        // As in libpq, a quoted value escapes quotes and backslashes with a backslash.
        let quoted = try ConnectionSpec.parse(#"password='a b\'c' user=x"#, environment: [:])
        #expect(quoted.password == "a b'c")
    }

    @Test func passwordsAreRedacted() {
        #expect(ConnectionSpec.redacted("direct=host=h password=secret dbname=m") == "direct=host=h password=… dbname=m")
        #expect(ConnectionSpec.redacted(#"a=password='a b\'c' user=x"#) == "a=password=… user=x")
        #expect(ConnectionSpec.redacted("password = s3 user=x") == "password=… user=x")
        #expect(ConnectionSpec.redacted("t=postgresql://ingest:p%40ss@db:5432/ticks") == "t=postgresql://ingest:…@db:5432/ticks")
        #expect(ConnectionSpec.redacted("--clients") == "--clients")
    }

    @Test func uriWithEscapes() throws {
        let spec = try ConnectionSpec.parse("postgresql://ingest:p%40ss@db.example:15432/ticks?sslmode=disable", environment: [:])
        #expect(spec == ConnectionSpec(host: "db.example", port: 15432, user: "ingest", password: "p@ss", database: "ticks", sslmode: "disable"))
    }

    @Test func environmentDefaults() throws {
        let spec = try ConnectionSpec.parse("dbname=market", environment: ["PGHOST": "h", "PGPORT": "7000", "PGUSER": "u", "PGPASSWORD": "pw"])
        #expect(spec == ConnectionSpec(host: "h", port: 7000, user: "u", password: "pw", database: "market"))
        #expect(try ConnectionSpec.parse("", environment: ["USER": "me"]).database == "me")
    }

    @Test func badInputIsAnError() {
        #expect(throws: ConnectionSpec.ParseError.self) { try ConnectionSpec.parse("port=http", environment: [:]) }
        #expect(throws: ConnectionSpec.ParseError.self) { try ConnectionSpec.parse("hots=x", environment: [:]) }
        #expect(throws: ConnectionSpec.ParseError.self) { try ConnectionSpec.parse("password='open", environment: [:]) }
        #expect(throws: ConnectionSpec.ParseError.self) { try ConnectionSpec.parse("host", environment: [:]) }
    }

    @Test func targetNames() throws {
        #expect(try TargetArgument.parse("direct=host=a port=1", position: 1) == TargetArgument(name: "direct", dsn: "host=a port=1"))
        #expect(try TargetArgument.parse("tg=postgresql://u@h/d", position: 2) == TargetArgument(name: "tg", dsn: "postgresql://u@h/d"))
        // A DSN without a name: `host` is a keyword, not a target name.
        #expect(try TargetArgument.parse("host=a port=1", position: 3) == TargetArgument(name: "target3", dsn: "host=a port=1"))
        #expect(throws: ConnectionSpec.ParseError.self) { try TargetArgument.parse("direct=", position: 1) }
    }
}

@Suite struct ScenarioTests {
    static let context = MarketContext(
        symbols: ["SPY", "QQQ", "AAPL", "NVDA"],
        days: [
            TradingDay(date: "2026-11-25", first: 1_795_613_400, last: 1_795_636_799),  // 13:30:00 – 19:59:59 UTC
            TradingDay(date: "2026-11-26", first: 1_795_699_800, last: 1_795_723_199),
        ])

    @Test func literalSQLQuotesAndNulls() {
        let kind = StatementKind(name: "k", sql: "SELECT $1, $2, $10, '$1' FROM t WHERE a = $3", weight: 1)
        let text = kind.literalSQL(["it's", nil, "x", "4", "5", "6", "7", "8", "9", "ten"])
        #expect(text == "SELECT 'it''s', NULL, 'ten', ''it''s'' FROM t WHERE a = 'x'")
    }

    @Test func timestamps() {
        #expect(APIReadsWorkload.timestamp(0) == "1970-01-01 00:00:00+00")
        #expect(APIReadsWorkload.timestamp(1_795_699_800) == "2026-11-26 13:30:00+00")
        #expect(APIReadsWorkload.midnight("2026-11-26") == 1_795_651_200)
        #expect(APIReadsWorkload.timestamp(microseconds: 1_795_699_800_000_042) == "2026-11-26 13:30:00.000042+00")
        #expect(APIReadsWorkload.timestamp(microseconds: -1) == "1969-12-31 23:59:59.999999+00")
    }

    @Test func apiReadsIsDeterministicAndInRange() {
        var a = APIReadsWorkload(context: Self.context, seed: 9, client: 2)
        var b = APIReadsWorkload(context: Self.context, seed: 9, client: 2)
        var seenKinds = Set<String>()
        for _ in 0..<2_000 {
            let statement = a.next()
            #expect(statement == b.next())
            let kind = a.kinds[statement.kind]
            seenKinds.insert(kind.name)
            let placeholders = Set(kind.sql.matches(of: /\$(\d+)/).map { Int($0.1)! })
            #expect(placeholders.count == statement.parameters.count, "\(kind.name)")
            if kind.name == "bars_1m_hour" {
                // An aligned hour of one of the days, within its trading.
                let start = statement.parameters[1]!
                #expect(start.hasSuffix(":00:00+00"))
                #expect(start >= "2026-11-25 13:00:00+00" && start <= "2026-11-26 19:00:00+00")
                #expect(Self.context.symbols.contains(statement.parameters[0]!))
            }
            if kind.name == "bars_5m_day" {
                #expect(["2026-11-25 00:00:00+00", "2026-11-26 00:00:00+00"].contains(statement.parameters[1]!))
            }
        }
        #expect(seenKinds == Set(a.kinds.map(\.name)))
    }

    @Test func apiReadsFavoursActiveSymbolsAndRecentDays() {
        var workload = APIReadsWorkload(context: Self.context, seed: 1, client: 0)
        var symbols: [String: Int] = [:]
        var recent = 0
        var older = 0
        for _ in 0..<20_000 {
            let statement = workload.next()
            let kind = workload.kinds[statement.kind].name
            if kind == "bars_5m_day" {
                symbols[statement.parameters[0]!, default: 0] += 1
                if statement.parameters[1]!.hasPrefix("2026-11-26") { recent += 1 } else { older += 1 }
            }
        }
        #expect(symbols["SPY", default: 0] > symbols["QQQ", default: 0])
        #expect(symbols["QQQ", default: 0] > symbols["NVDA", default: 0])
        #expect(recent > older)
    }

    @Test func ingestTradeIdsAreUniqueAcrossClients() {
        let clock: @Sendable () -> Int64 = { 1_795_699_800_000_000 }
        var ids = Set<String>()
        for client in 0..<4 {
            var workload = IngestWorkload(symbols: ["SPY", "QQQ"], seed: 3, client: client, runID: 1_795_699_800, clock: clock)
            for _ in 0..<500 {
                let statement = workload.next()
                #expect(statement.parameters.count == 6)
                #expect(statement.parameters[0] == "2026-11-26 13:30:00.000000+00")
                #expect(Double(statement.parameters[2]!)! > 0)
                #expect(ids.insert(statement.parameters[5]!).inserted)
            }
        }
        #expect(ids.allSatisfy { Int64($0) != nil })
    }
}

@Suite struct PgbenchOutputTests {
    @Test func transactionLogLines() {
        let ok = PgbenchOutput.transaction("3 117 412 0 1795699800 250000")
        #expect(ok?.client == 3)
        #expect(ok?.latency == 412)
        #expect(ok?.end == 1_795_699_800_250_000)
        let failed = PgbenchOutput.transaction("1 5 failed 0 1795699801 10 0")
        #expect(failed?.latency == nil)
        #expect(failed?.skipped == false)
        #expect(PgbenchOutput.transaction("2 9 skipped 0 1795699801 10 1500")?.skipped == true)
        #expect(PgbenchOutput.transaction("garbage") == nil)
    }

    @Test func progressAndSummary() {
        let line = PgbenchOutput.progress("progress: 5.0 s, 18234.9 tps, lat 0.875 ms stddev 0.123, 0 failed")
        #expect(line?.seconds == 5.0)
        #expect(line?.tps == 18234.9)
        #expect(line?.latencyMs == 0.875)
        #expect(PgbenchOutput.progress("starting vacuum...end.") == nil)
        #expect(PgbenchOutput.tps("latency average = 0.8 ms\ntps = 18234.912345 (without initial connection time)\n") == 18234.912345)
    }

    @Test func abortsKeepTheServerMessage() {
        let output = """
            pgbench (15.18)
            client 3 script 0 aborted in command 1 query 0: ERROR:  relation "pgbench_accounts" does not exist
            pgbench: error: connection to server at "127.0.0.1", port 1 failed: Connection refused
            """
        #expect(PgbenchOutput.errors(output) == [
            #"ERROR:  relation "pgbench_accounts" does not exist"#,
            #"connection to server at "127.0.0.1", port 1 failed: Connection refused"#,
        ])
    }
}

@Suite struct LatencySummaryTests {
    @Test func percentilesOfKnownValues() {
        var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        for value in 1...10_000 { _ = histogram.record(UInt64(value)) }  // 1 µs … 10 ms, uniform
        let summary = LatencySummary(microseconds: histogram)
        #expect(summary.count == 10_000)
        // Three significant digits: within 0.1 %.
        #expect(abs(summary.p50Ms - 5.0) <= 0.006)
        #expect(abs(summary.p90Ms - 9.0) <= 0.01)
        #expect(abs(summary.p99Ms - 9.9) <= 0.01)
        #expect(abs(summary.p999Ms - 9.99) <= 0.011)
        #expect(abs(summary.maxMs - 10.0) <= 0.011)
        #expect(abs(summary.meanMs - 5.0005) <= 0.006)
        #expect(LatencySummary(microseconds: Histogram<UInt64>(highestTrackableValue: 1000)).count == 0)
    }
}
