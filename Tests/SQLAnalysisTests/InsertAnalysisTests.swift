import Testing

@testable import SQLAnalysis

@Suite struct InsertAnalysisTests {
    func shape(_ sql: String) -> InsertShape? {
        if case .success(let shape) = InsertAnalyzer.analyze(sql) { return shape }
        return nil
    }

    func refusal(_ sql: String) -> String? {
        if case .failure(let refusal) = InsertAnalyzer.analyze(sql) { return refusal.reason }
        return nil
    }

    @Test func parametersAndAnImmutableCall() throws {
        let shape = try #require(self.shape("INSERT INTO ticks (ts, symbol, price) VALUES (to_timestamp($1), $2, $3)"))
        #expect(shape.relation == "ticks")
        #expect(shape.schema == nil)
        #expect(shape.columns == ["ts", "symbol", "price"])
        #expect(shape.items == [.call(function: "\"to_timestamp\"", name: "to_timestamp", arguments: [.slot(0)]), .slot(1), .slot(2)])
        #expect(shape.slotClasses == [.parameter(1), .parameter(2), .parameter(3)])
        #expect(shape.rows == [[.parameter(1), .parameter(2), .parameter(3)]])
        #expect(shape.functions == ["to_timestamp"])
        #expect(shape.parameterCount == 3)
    }

    @Test func constantsKeepTheirLiteralTypes() throws {
        let shape = try #require(
            self.shape("INSERT INTO public.ticks VALUES ('2026-11-02 10:00+00', 'A''B', -1, 12345678901, 1.5, -2.5e3, true, NULL)"))
        #expect(shape.qualifiedName == "\"public\".\"ticks\"")
        #expect(shape.columns.isEmpty)
        #expect(shape.slotClasses == [.unknown, .unknown, .int4, .int8, .numeric, .numeric, .bool, .unknown])
        #expect(
            shape.rows[0] == [
                .constant("2026-11-02 10:00+00"), .constant("A'B"), .constant("-1"), .constant("12345678901"), .constant("1.5"),
                .constant("-2.5e3"), .constant("t"), .constant(nil),
            ])
    }

    @Test func negativeIntegersAreReadFromTheText() throws {
        // The parse tree's JSON leaves a negative int4 out (`"ival": {}`): the text decides.
        let shape = try #require(self.shape("INSERT INTO t (a, b, c) VALUES (- 1, -2147483648, 0)"))
        #expect(shape.rows[0] == [.constant("-1"), .constant("-2147483648"), .constant("0")])
        // Like PostgreSQL: 2147483648 does not fit int4 before it is negated, so the constant is int8.
        #expect(shape.slotClasses == [.int4, .int8, .int4])
    }

    @Test func rowsOfOneShapeWidenNumbersAndAcceptNull() throws {
        let shape = try #require(self.shape("INSERT INTO t (a, b) VALUES (1, NULL), (2.5, 'x'), (NULL, 'y')"))
        #expect(shape.rows.count == 3)
        #expect(shape.slotClasses == [.numeric, .unknown])
        let parameters = try #require(self.shape("INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"))
        #expect(parameters.declaredOIDs(parameterTypes: [23, 25, 23, 25]) == [23, 25])
        #expect(parameters.declaredOIDs(parameterTypes: [23, 25, 20, 25]) == nil)
    }

    @Test func castsAndTypeModifiers() throws {
        let shape = try #require(
            self.shape("INSERT INTO t (a, b, c) VALUES ($1::timestamptz, timestamptz '2026-01-01', CAST($2 AS numeric(10, 2)))"))
        #expect(
            shape.items == [
                .cast(.slot(0), type: "\"timestamptz\""), .cast(.slot(1), type: "\"timestamptz\""),
                .cast(.slot(2), type: "\"pg_catalog\".\"numeric\"(10, 2)"),
            ])
        #expect(BatchStatementText.render(shape) == "CAST($1 AS \"timestamptz\"), CAST($2 AS \"timestamptz\"), CAST($3 AS \"pg_catalog\".\"numeric\"(10, 2))")
    }

    @Test func whatIsNotBatched() {
        #expect(self.refusal("INSERT INTO t VALUES (1) RETURNING *") == "RETURNING")
        #expect(self.refusal("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING") == "ON CONFLICT")
        #expect(self.refusal("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x") == "WITH")
        #expect(self.refusal("INSERT INTO t SELECT 1") == "not INSERT … VALUES")
        #expect(self.refusal("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)") == "not a single INSERT")
        #expect(self.refusal("INSERT INTO t (a) VALUES (1 + 2)") != nil)
        #expect(self.refusal("INSERT INTO t (a) VALUES (now())") == nil)  // volatility is the catalog's to judge
        #expect(self.refusal("INSERT INTO t (a) VALUES ((SELECT 1))") != nil)
        #expect(self.refusal("INSERT INTO t (a) VALUES (1), ('x', 2)") != nil)
        #expect(self.refusal("INSERT INTO t (a) VALUES (1), ($1)") == "rows of different shapes")
        #expect(self.refusal("INSERT INTO t (a[1]) VALUES (1)") != nil)
        #expect(self.refusal("INSERT INTO t (a) VALUES (DEFAULT)") != nil)
        #expect(self.refusal("INSERT INTO t (a) VALUES (0x1F)") != nil)
        #expect(self.refusal("INSERT INTO t (a) VALUES (interval '1' day)") != nil)
        #expect(self.refusal("SELECT 1") == "not a single INSERT")
        #expect(self.refusal("INSERT INTO t (a, b) VALUES (1)") == "VALUES lists and columns differ in number")
    }
}

/// The items of a shape as the template writes them.
enum BatchStatementText {
    static func render(_ shape: InsertShape) -> String {
        shape.items.map { $0.sql { "$\($0 + 1)" } }.joined(separator: ", ")
    }
}
