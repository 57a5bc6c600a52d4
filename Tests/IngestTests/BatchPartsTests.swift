import Foundation
import NIOCore
import SQLAnalysis
import Testing

@testable import Ingest

@Suite struct ArrayParameterTests {
    @Test func textArraysQuoteEveryElement() {
        var array = ArrayParameter(elementOID: 25, binary: false)
        array.append(ByteBuffer(string: "plain"))
        array.append(ByteBuffer(string: "a \"quoted\", {braced} \\ value"))
        array.append(nil)
        array.append(text: "")
        array.append(text: "NULL")
        #expect(String(buffer: array.finished()) == #"{"plain","a \"quoted\", {braced} \\ value",NULL,"","NULL"}"#)
        #expect(array.count == 5)
    }

    @Test func binaryArraysCarryTheClientsBytes() {
        var array = ArrayParameter(elementOID: 23, binary: true)
        var one = ByteBuffer()
        one.writeInteger(Int32(1))
        array.append(one)
        array.append(nil)
        var out = array.finished()
        #expect(out.readInteger(as: Int32.self) == 1)  // dimensions
        #expect(out.readInteger(as: Int32.self) == 1)  // has nulls
        #expect(out.readInteger(as: UInt32.self) == 23)
        #expect(out.readInteger(as: Int32.self) == 2)  // elements
        #expect(out.readInteger(as: Int32.self) == 1)  // lower bound
        #expect(out.readInteger(as: Int32.self) == 4)
        #expect(out.readInteger(as: Int32.self) == 1)
        #expect(out.readInteger(as: Int32.self) == -1)
        #expect(out.readableBytes == 0)
    }
}

@Suite struct BatchRuleTests {
    @Test func numbersAndNull() {
        let rule = BatchRule(name: "price_positive", column: "price", check: .greaterThan(0))
        #expect(rule.accepts(.number(0.01), nowMicros: 0))
        #expect(!rule.accepts(.number(0), nowMicros: 0))
        #expect(rule.accepts(nil, nowMicros: 0))  // like CHECK: NULL passes
        #expect(!BatchRule(name: "n", column: "price", check: .notNull).accepts(nil, nowMicros: 0))
        #expect(rule.text == "price > 0")
        // NaN is above every number, as in PostgreSQL.
        #expect(rule.accepts(.number(.nan), nowMicros: 0))
        #expect(!BatchRule(name: "cap", column: "price", check: .lessThan(10)).accepts(.number(.nan), nowMicros: 0))
    }

    @Test func instantsAgainstTheClock() {
        let rule = BatchRule(name: "ts_not_future", column: "ts", check: .maxFutureMs(5_000))
        let now: Int64 = 1_800_000_000_000_000
        #expect(rule.accepts(.instant(now + 4_999_000), nowMicros: now))
        #expect(!rule.accepts(.instant(now + 5_001_000), nowMicros: now))
        #expect(!rule.accepts(.number(1), nowMicros: now))
    }

    @Test func readingValues() {
        #expect(RuleValueReader.number(ByteBuffer(string: " 12.5 "), oid: 1700, binary: false) == 12.5)
        #expect(RuleValueReader.number(ByteBuffer(string: "abc"), oid: 1700, binary: false) == nil)
        var float = ByteBuffer()
        float.writeInteger((-2.5).bitPattern)
        #expect(RuleValueReader.number(float, oid: 701, binary: true) == -2.5)
        // numeric 12345.678 in binary: 3 digits, weight 1, positive, dscale 3: 1 2345 6780.
        var numeric = ByteBuffer()
        for value: Int16 in [3, 1, 0, 3, 1, 2345, 6780] { numeric.writeInteger(value) }
        #expect(abs((RuleValueReader.number(numeric, oid: 1700, binary: true) ?? 0) - 12345.678) < 1e-9)
        let nineUTC: Int64 = 1_793_610_000_000_000
        let zoned = RuleValueReader.instant(ByteBuffer(string: "2026-11-02 10:00:00+01"), oid: 1184, binary: false, zone: nil)
        #expect(zoned == nineUTC)
        // Without a zone the session's TimeZone decides (New York is at -05:00 on 2 November 2026, -04:00 in
        // July); an unknown zone leaves it unread.
        #expect(RuleValueReader.instant(ByteBuffer(string: "2026-11-02 10:00:00"), oid: 1184, binary: false, zone: nil) == nil)
        let utc = TimeZone(identifier: "UTC")
        #expect(RuleValueReader.instant(ByteBuffer(string: "2026-11-02 10:00:00"), oid: 1184, binary: false, zone: utc) == 1_793_613_600_000_000)
        let newYork = TimeZone(identifier: "America/New_York")
        let winter: Int64 = 1_793_613_600_000_000 + 5 * 3_600_000_000
        let summer: Int64 = 1_782_900_000_000_000 + 4 * 3_600_000_000
        #expect(RuleValueReader.instant(ByteBuffer(string: "2026-11-02 10:00:00"), oid: 1184, binary: false, zone: newYork) == winter)
        #expect(RuleValueReader.instant(ByteBuffer(string: "2026-07-01 10:00:00"), oid: 1184, binary: false, zone: newYork) == summer)
        var binary = ByteBuffer()
        binary.writeInteger(Int64(1_793_613_600_000_000 - 946_684_800_000_000))
        #expect(RuleValueReader.instant(binary, oid: 1184, binary: true, zone: nil) == 1_793_613_600_000_000)
        #expect(RuleValueReader.instant(seconds: 1.5) == 1_500_000)
    }
}

@Suite struct BatchStatementTests {
    func shape(_ sql: String) throws -> InsertShape {
        guard case .success(let shape) = InsertAnalyzer.analyze(sql) else { throw Refused() }
        return shape
    }

    struct Refused: Error {}

    @Test func plainBatch() throws {
        let shape = try self.shape("INSERT INTO ticks (ts, symbol) VALUES (to_timestamp($1), $2)")
        #expect(
            BatchStatement.sql(shape: shape, ignoreConflicts: false, key: [], cache: nil)
                == "INSERT INTO \"ticks\" (\"ts\", \"symbol\") SELECT \"to_timestamp\"(u.s1), u.s2 FROM unnest($1, $2) AS u(s1, s2)")
        #expect(BatchStatement.templateSQL(shape: shape) == "INSERT INTO \"ticks\" (\"ts\", \"symbol\") VALUES (\"to_timestamp\"($1), $2)")
    }

    @Test func withTheCacheTheBucketsComeBack() throws {
        let shape = try self.shape("INSERT INTO ticks (ts, symbol) VALUES ($1, $2)")
        let sql = BatchStatement.sql(
            shape: shape, ignoreConflicts: false, key: [],
            cache: BatchCacheColumns(timeColumn: "ts", instrumentColumn: "symbol", bucketMicros: 60_000_000))
        #expect(sql.hasPrefix("WITH ins AS (INSERT INTO \"ticks\""))
        #expect(sql.contains("RETURNING \"ts\", \"symbol\")"))
        #expect(sql.contains("floor(extract(epoch FROM \"ts\") * 1000000 / 60000000)::int8"))
    }

    @Test func ignoreConflictsCountsPerStatement() throws {
        let shape = try self.shape("INSERT INTO ticks (ts, symbol, trade_id) VALUES ($1, $2, $3)")
        let key = [
            BatchKeyColumn(name: "symbol", item: 1, type: "text"), BatchKeyColumn(name: "ts", item: 0, type: "timestamp with time zone"),
        ]
        let sql = BatchStatement.sql(shape: shape, ignoreConflicts: true, key: key, cache: nil)
        #expect(sql.contains("unnest($1, $2, $3, $4) WITH ORDINALITY AS u(s1, s2, s3, item, ord)"))
        #expect(sql.contains("ON CONFLICT DO NOTHING RETURNING tableoid, ctid, \"symbol\", \"ts\""))
        #expect(sql.contains("ins.\"symbol\" = CAST(u.s2 AS text) AND ins.\"ts\" = CAST(u.s1 AS timestamp with time zone)"))
        #expect(sql.hasSuffix("GROUP BY u.item"))
        // With the cache, the key's time and instrument columns are not returned twice.
        let cached = BatchStatement.sql(
            shape: shape, ignoreConflicts: true, key: key,
            cache: BatchCacheColumns(timeColumn: "ts", instrumentColumn: "symbol", bucketMicros: 60_000_000))
        #expect(cached.contains("RETURNING tableoid, ctid, \"symbol\", \"ts\")"))
        #expect(cached.contains(" UNION ALL SELECT 't'::text, \"symbol\"::text"))
    }
}
