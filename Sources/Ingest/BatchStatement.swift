import SQLAnalysis

/// What a batch reports back per row, beyond its command tag.
public struct BatchCacheColumns: Sendable, Hashable {
    public var timeColumn: String
    public var instrumentColumn: String
    /// The finest cache bucket in microseconds: rows are reported per (instrument, bucket).
    public var bucketMicros: Int64

    public init(timeColumn: String, instrumentColumn: String, bucketMicros: Int64) {
        self.timeColumn = timeColumn
        self.instrumentColumn = instrumentColumn
        self.bucketMicros = bucketMicros
    }
}

/// A column of the natural key, for `on_conflict: ignore`: its position among the statement's items and
/// its type (SQL text, `format_type`).
public struct BatchKeyColumn: Sendable, Hashable {
    public var name: String
    public var item: Int
    public var type: String

    public init(name: String, item: Int, type: String) {
        self.name = name
        self.item = item
        self.type = type
    }
}

/// The one statement that inserts a whole batch: the clients' rows arrive as one array per slot and
/// `unnest` turns them back into rows, each computed by the clients' own expressions
/// (`to_timestamp(u.s1)`), so PostgreSQL does the same coercions as for the clients' statements.
///
/// - Plain (`on_conflict: error`, no cache): `INSERT … SELECT … FROM unnest($1, …) AS u(s1, …)`; the tag
///   counts the rows.
/// - With the cache: the inserted rows' (instrument, bucket) pairs come back with their counts, rows
///   `('t', instrument, bucket, count)`.
/// - `on_conflict: ignore`: `ON CONFLICT DO NOTHING`; an extra array gives each row its statement's index and
///   rows `('i', index, NULL, count)` say how many rows of each statement went in (matched back through the
///   natural key; the first of equal keys is the one inserted, as rows go in in order).
public enum BatchStatement {
    public static func sql(
        shape: InsertShape, ignoreConflicts: Bool, key: [BatchKeyColumn], cache: BatchCacheColumns?
    ) -> String {
        let slots = shape.slotClasses.count
        let names = (0..<slots).map { "s\($0 + 1)" }
        let unnestArgs = (0..<slots).map { "$\($0 + 1)" }
        let columns = shape.columnListSQL
        let target = shape.qualifiedName
        let values = shape.items.map { $0.sql { "u.s\($0 + 1)" } }.joined(separator: ", ")
        var returning: [String] = []
        if ignoreConflicts { returning += ["tableoid", "ctid"] + key.map { InsertAnalyzer.quote($0.name) } }
        if let cache {
            // A key column that is also the time or instrument column is returned once (a name twice in
            // RETURNING would make `ins.<name>` ambiguous).
            for column in [cache.timeColumn, cache.instrumentColumn] where !returning.contains(InsertAnalyzer.quote(column)) {
                returning.append(InsertAnalyzer.quote(column))
            }
        }
        let tagSelect = cache.map { cache in
            let time = InsertAnalyzer.quote(cache.timeColumn)
            let instrument = InsertAnalyzer.quote(cache.instrumentColumn)
            return "SELECT 't'::text, \(instrument)::text, floor(extract(epoch FROM \(time)) * 1000000 / \(cache.bucketMicros))::int8, "
                + "count(*) FROM ins GROUP BY 2, 3"
        }
        if !ignoreConflicts {
            let insert = "INSERT INTO \(target)\(columns) SELECT \(values) FROM unnest(\(unnestArgs.joined(separator: ", "))) AS u(\(names.joined(separator: ", ")))"
            guard let tagSelect else { return insert }
            return "WITH ins AS (\(insert) RETURNING \(returning.joined(separator: ", "))) \(tagSelect)"
        }
        let itemArg = "$\(slots + 1)"
        var sql = "WITH u AS MATERIALIZED (SELECT * FROM unnest(\(unnestArgs.joined(separator: ", ")), \(itemArg)) "
        sql += "WITH ORDINALITY AS u(\(names.joined(separator: ", ")), item, ord)), "
        sql += "ins AS (INSERT INTO \(target)\(columns) SELECT \(values) FROM u ORDER BY u.ord ON CONFLICT DO NOTHING "
        sql += "RETURNING \(returning.joined(separator: ", "))), "
        let join = key.map { column in
            "ins.\(InsertAnalyzer.quote(column.name)) = CAST(\(shape.items[column.item].sql { "u.s\($0 + 1)" }) AS \(column.type))"
        }.joined(separator: " AND ")
        sql += "hit AS (SELECT min(u.ord) AS ord FROM ins JOIN u ON \(join) GROUP BY ins.tableoid, ins.ctid) "
        sql += "SELECT 'i'::text, u.item::text, NULL::int8, count(*) FROM hit JOIN u USING (ord) GROUP BY u.item"
        if let tagSelect { sql += " UNION ALL " + tagSelect }
        return sql
    }

    /// The statement whose Describe gives the slots' types: one row of the clients' statement, each slot a
    /// parameter declared as the slot's class says.
    public static func templateSQL(shape: InsertShape) -> String { shape.oneRowSQL }
}
