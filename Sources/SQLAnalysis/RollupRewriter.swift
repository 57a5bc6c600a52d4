import CPgQuery
import Foundation

/// The raw relation and its rollups, as `tidegate migrate` creates them: ticks (time, instrument, price
/// and size columns) and bars tables of fixed widths (symbol, bucket, open, high, low, close, volume,
/// trade_count).
public struct RollupSchema: Sendable, Equatable {
    public struct Level: Sendable, Equatable {
        public var table: String
        public var widthMicros: Int64
        /// The width as an interval literal, for the rewritten text.
        public var interval: String

        public init(table: String, widthMicros: Int64, interval: String) {
            self.table = table
            self.widthMicros = widthMicros
            self.interval = interval
        }
    }

    public var relation = "ticks"
    public var timeColumn = "ts"
    public var instrumentColumn = "symbol"
    public var priceColumn = "price"
    public var sizeColumn = "size"
    /// Every column of the relation: an output alias equal to one of them is resolved differently by
    /// GROUP BY and ORDER BY, so such queries are left alone.
    public var columns: Set<String> = ["ts", "symbol", "price", "size", "exchange", "trade_id", "conditions"]
    /// Columns that are never NULL, so count(column) is count(*).
    public var notNullColumns: Set<String> = ["ts", "symbol", "price", "size", "exchange", "trade_id", "conditions"]
    public var levels: [Level] = [
        Level(table: "bars_1m", widthMicros: 60_000_000, interval: "1 minute"),
        Level(table: "bars_5m", widthMicros: 300_000_000, interval: "5 minutes"),
        Level(table: "bars_15m", widthMicros: 900_000_000, interval: "15 minutes"),
        Level(table: "bars_1h", widthMicros: 3_600_000_000, interval: "1 hour"),
        Level(table: "bars_1d", widthMicros: 86_400_000_000, interval: "1 day"),
    ]

    public init() {}

    /// The tidegate schema for a relation whose time and instrument columns are configured.
    public init(relation: String, timeColumn: String, instrumentColumn: String) {
        self.relation = relation
        self.timeColumn = timeColumn
        self.instrumentColumn = instrumentColumn
    }
}

/// What the rewrite made of a statement.
public enum RollupRewrite: Sendable, Equatable {
    /// The text to send instead, and the rollup it reads.
    case rewritten(sql: String, rollup: String)
    /// Why the statement is sent as it is.
    case unchanged(reason: String)

    public var sql: String? {
        if case .rewritten(let sql, _) = self { return sql }
        return nil
    }
}

/// The multi-timeframe rewrite: a query that aggregates raw ticks by `time_bucket(w, ts)` with
/// first/last/max/min of the price, sum/avg of the size and count is rewritten to read the coarsest
/// rollup whose width divides w wherever that rollup is materialized, and raw ticks for the rest of the
/// range (the unaligned edges of the range, and whatever the rollup has not caught up with). The
/// materialized part is decided by the database in the same snapshot as the read
/// (`tidegate_rollup_watermark`, migration 4), so the result is the raw query's result.
///
/// Anything outside the recognised shape is left unchanged, with the reason. The rewritten text is
/// generated from the parse tree, never spliced from the client's text.
public enum RollupRewriter {
    public static func rewrite(_ sql: String, schema: RollupSchema = RollupSchema()) -> RollupRewrite {
        let result = pg_query_parse(sql)
        defer { pg_query_free_parse_result(result) }
        if result.error != nil { return .unchanged(reason: "does not parse") }
        guard let tree = result.parse_tree,
            let json = try? JSONSerialization.jsonObject(with: Data(String(cString: tree).utf8)) as? [String: Any],
            let statements = json["stmts"] as? [[String: Any]]
        else { return .unchanged(reason: "does not parse") }
        guard statements.count == 1, let statement = statements[0]["stmt"] as? [String: Any],
            let select = statement["SelectStmt"] as? [String: Any]
        else { return .unchanged(reason: "not a single SELECT") }
        do {
            var builder = Builder(schema: schema)
            return try builder.build(select)
        } catch let error as Unsupported {
            return .unchanged(reason: error.reason)
        } catch {
            return .unchanged(reason: "\(error)")
        }
    }

    /// The width of an interval literal in microseconds, for the forms `N unit [N unit ...]` with units
    /// from microseconds to weeks; nil for anything else (months and years have no fixed width).
    public static func intervalMicros(_ text: String) -> Int64? {
        let units: [String: Int64] = [
            "microsecond": 1, "microseconds": 1, "us": 1, "usec": 1, "usecs": 1,
            "millisecond": 1_000, "milliseconds": 1_000, "ms": 1_000, "msec": 1_000, "msecs": 1_000,
            "second": 1_000_000, "seconds": 1_000_000, "sec": 1_000_000, "secs": 1_000_000, "s": 1_000_000,
            "minute": 60_000_000, "minutes": 60_000_000, "min": 60_000_000, "mins": 60_000_000, "m": 60_000_000,
            "hour": 3_600_000_000, "hours": 3_600_000_000, "hr": 3_600_000_000, "hrs": 3_600_000_000,
            "h": 3_600_000_000,
            "day": 86_400_000_000, "days": 86_400_000_000, "d": 86_400_000_000,
            "week": 604_800_000_000, "weeks": 604_800_000_000, "w": 604_800_000_000,
        ]
        // Split "5minutes" and "5 minutes" alike into number and unit tokens.
        var tokens: [String] = []
        var current = ""
        var currentIsDigit = false
        for character in text.lowercased() {
            if character.isWhitespace {
                if !current.isEmpty { tokens.append(current) }
                current = ""
                continue
            }
            let isDigit = character.isASCII && character.isNumber
            guard isDigit || (character.isASCII && character.isLetter) else { return nil }
            if !current.isEmpty && isDigit != currentIsDigit {
                tokens.append(current)
                current = ""
            }
            current.append(character)
            currentIsDigit = isDigit
        }
        if !current.isEmpty { tokens.append(current) }
        guard !tokens.isEmpty, tokens.count % 2 == 0 else { return nil }
        var total: Int64 = 0
        for index in stride(from: 0, to: tokens.count, by: 2) {
            guard let count = Int64(tokens[index]), count >= 0, let unit = units[tokens[index + 1]] else { return nil }
            let (product, overflow) = count.multipliedReportingOverflow(by: unit)
            guard !overflow else { return nil }
            let (sum, overflowSum) = total.addingReportingOverflow(product)
            guard !overflowSum else { return nil }
            total = sum
        }
        return total > 0 ? total : nil
    }
}

struct Unsupported: Error {
    var reason: String
    init(_ reason: String) { self.reason = reason }
}

/// Builds the rewritten statement from a SelectStmt parse tree (libpg_query's JSON).
private struct Builder {
    typealias Node = [String: Any]

    let schema: RollupSchema
    /// The name the query gives the relation (its alias, or its own name).
    var qualifier = ""

    enum Output {
        case bucket
        case instrument
        case first, last, max, min, sum, count, avg
    }

    struct Target {
        var output: Output
        var name: String
        var node: Node
    }

    init(schema: RollupSchema) {
        self.schema = schema
    }

    static let allowedKeys: Set<String> = [
        "targetList", "fromClause", "whereClause", "groupClause", "sortClause", "limitCount", "limitOffset",
        "limitOption", "op",
    ]

    mutating func build(_ select: Node) throws -> RollupRewrite {
        for key in select.keys where !Self.allowedKeys.contains(key) {
            throw Unsupported("the query has a \(key) clause")
        }
        if let op = select["op"] as? String, op != "SETOP_NONE" { throw Unsupported("a set operation") }
        if let option = select["limitOption"] as? String, option != "LIMIT_OPTION_COUNT", option != "LIMIT_OPTION_DEFAULT" {
            throw Unsupported("FETCH … WITH TIES")
        }

        // FROM: the relation alone.
        guard let from = select["fromClause"] as? [Node], from.count == 1, let range = from[0]["RangeVar"] as? Node else {
            throw Unsupported("FROM is not the single relation \(self.schema.relation)")
        }
        guard range["relname"] as? String == self.schema.relation, range["schemaname"] == nil, range["catalogname"] == nil
        else { throw Unsupported("FROM is not \(self.schema.relation)") }
        guard range["inh"] as? Bool == true else { throw Unsupported("FROM ONLY") }
        if let alias = range["alias"] as? Node {
            guard alias["colnames"] == nil, let name = alias["aliasname"] as? String else { throw Unsupported("a column alias list") }
            self.qualifier = name
        } else {
            self.qualifier = self.schema.relation
        }

        // SELECT list.
        guard let targetList = select["targetList"] as? [Node], !targetList.isEmpty else { throw Unsupported("no select list") }
        var targets: [Target] = []
        var bucketWidth: (node: Node, micros: Int64)?
        for entry in targetList {
            guard let target = entry["ResTarget"] as? Node, let value = target["val"] as? Node else {
                throw Unsupported("an unsupported select item")
            }
            let (output, defaultName) = try self.classifyTarget(value)
            if output == .bucket {
                let width = try self.bucketWidth(value)
                if let existing = bucketWidth, existing.micros != width.micros || !Self.same(existing.node, width.node) {
                    throw Unsupported("two different time_bucket widths")
                }
                bucketWidth = width
            }
            let name = target["name"] as? String ?? defaultName
            if target["name"] != nil && self.schema.columns.contains(name) {
                throw Unsupported("the output name \"\(name)\" is also a column of \(self.schema.relation)")
            }
            targets.append(Target(output: output, name: name, node: value))
        }

        // GROUP BY: the bucket, and optionally the instrument.
        guard let groupClause = select["groupClause"] as? [Node], !groupClause.isEmpty else {
            throw Unsupported("no GROUP BY")
        }
        var groupsBucket = false
        var groupsInstrument = false
        for item in groupClause {
            switch try self.resolveGroupItem(item, targets: targets) {
            case .bucket(let node):
                let width = try self.bucketWidth(node)
                if let existing = bucketWidth, existing.micros != width.micros || !Self.same(existing.node, width.node) {
                    throw Unsupported("GROUP BY a different time_bucket width")
                }
                bucketWidth = width
                groupsBucket = true
            case .instrument:
                groupsInstrument = true
            }
        }
        guard groupsBucket, let (widthNode, widthMicros) = bucketWidth else { throw Unsupported("GROUP BY has no time_bucket") }
        if targets.contains(where: { $0.output == .instrument }) && !groupsInstrument {
            throw Unsupported("the instrument is selected but not grouped")
        }

        // The rollup: the coarsest whose width divides the bucket width.
        guard let level = self.schema.levels.filter({ widthMicros % $0.widthMicros == 0 }).max(by: { $0.widthMicros < $1.widthMicros })
        else { throw Unsupported("no rollup width divides the bucket width") }

        // WHERE: time bounds and instrument conditions only.
        var lowers: [(sql: String, inclusive: Bool)] = []
        var uppers: [(sql: String, inclusive: Bool)] = []
        var timeConditions: [(op: String, sql: String)] = []
        var between: [(String, String)] = []
        var instrumentConditions: [(String) -> String] = []
        var singleInstrument = false
        if let whereClause = select["whereClause"] as? Node {
            for conjunct in Self.conjuncts(whereClause) {
                try self.classifyCondition(
                    conjunct, lowers: &lowers, uppers: &uppers, timeConditions: &timeConditions, between: &between,
                    instrument: &instrumentConditions, singleInstrument: &singleInstrument)
            }
        }
        // A bar knows when its bucket starts, not when its first and last trades were: bars of several
        // instruments in one group cannot say whose trade came first.
        if !groupsInstrument && !singleInstrument && targets.contains(where: { $0.output == .first || $0.output == .last }) {
            throw Unsupported("first/last over several instruments in one group (group by \(self.schema.instrumentColumn) or select one)")
        }

        let width = "'\(level.interval)'::interval"
        let starts = lowers.map { "tidegate_rollup_start(\(width), CAST(\($0.sql) AS timestamptz), \($0.inclusive))" }
        let ends = uppers.map { "tidegate_rollup_end(\(width), CAST(\($0.sql) AS timestamptz), \($0.inclusive))" }
        let lo = "greatest(\((["'-infinity'::timestamptz"] + starts).joined(separator: ", ")))"
        let watermark =
            "tidegate_rollup_end(\(width), tidegate_rollup_watermark(\(Self.literal(level.table))::regclass, tg_lo.lo), false)"
        let hi = "least(\((ends + [watermark]).joined(separator: ", ")))"

        // The rollup part: its buckets wholly inside the range and materialized.
        var barConditions = instrumentConditions.map { $0("b.symbol") }
        for (op, sql) in timeConditions { barConditions.append("b.bucket \(op) \(sql)") }
        for (low, high) in between { barConditions.append("b.bucket BETWEEN \(low) AND \(high)") }
        barConditions.append("b.bucket >= (SELECT lo FROM tg_range)")
        barConditions.append("b.bucket < (SELECT hi FROM tg_range)")
        // The raw parts: the original conditions, before and after the rollup's part.
        var rawConditions = instrumentConditions.map { $0("t.\(Self.identifier(self.schema.instrumentColumn))") }
        let rawTime = "t.\(Self.identifier(self.schema.timeColumn))"
        for (op, sql) in timeConditions { rawConditions.append("\(rawTime) \(op) \(sql)") }
        for (low, high) in between { rawConditions.append("\(rawTime) BETWEEN \(low) AND \(high)") }

        let instrument = Self.identifier(self.schema.instrumentColumn)
        let price = Self.identifier(self.schema.priceColumn)
        let size = Self.identifier(self.schema.sizeColumn)
        let relation = Self.identifier(self.schema.relation)
        let rawSelect = "SELECT t.\(instrument) AS symbol, \(rawTime) AS ts, t.\(price) AS open, t.\(price) AS high, "
            + "t.\(price) AS low, t.\(price) AS close, t.\(size) AS volume, 1 AS trade_count FROM \(relation) t WHERE "
        let head = rawSelect + (rawConditions + ["\(rawTime) < (SELECT lo FROM tg_range)"]).joined(separator: " AND ")
        let tail = rawSelect + (rawConditions + ["\(rawTime) >= (SELECT greatest(lo, hi) FROM tg_range)"]).joined(separator: " AND ")
        let bars = "SELECT b.symbol, b.bucket AS ts, b.open, b.high, b.low, b.close, b.volume, b.trade_count FROM "
            + "\(Self.identifier(level.table)) b WHERE " + barConditions.joined(separator: " AND ")

        let bucketSQL = "time_bucket(\(try self.constant(widthNode)), tg.ts)"
        let outputs = targets.map { target -> String in
            let expression: String
            switch target.output {
            case .bucket: expression = bucketSQL
            case .instrument: expression = "tg.symbol"
            case .first: expression = "first(tg.open, tg.ts)"
            case .last: expression = "last(tg.close, tg.ts)"
            case .max: expression = "max(tg.high)"
            case .min: expression = "min(tg.low)"
            case .sum: expression = "sum(tg.volume)"
            case .count: expression = "sum(tg.trade_count)::bigint"
            case .avg: expression = "(sum(tg.volume)::numeric / sum(tg.trade_count)::numeric)"
            }
            return "\(expression) AS \(Self.identifier(target.name))"
        }
        var sql = "WITH tg_range AS MATERIALIZED (SELECT tg_lo.lo, \(hi) AS hi FROM (SELECT \(lo) AS lo) tg_lo)\n"
        sql += "SELECT \(outputs.joined(separator: ", "))\n"
        sql += "FROM (\(bars)\n  UNION ALL \(head)\n  UNION ALL \(tail)) tg\n"
        sql += "GROUP BY \(bucketSQL)\(groupsInstrument ? ", tg.symbol" : "")"
        if let sort = select["sortClause"] as? [Node], !sort.isEmpty {
            sql += "\nORDER BY " + (try sort.map { try self.sortItem($0, targets: targets, bucketSQL: bucketSQL, width: widthNode) }).joined(separator: ", ")
        }
        if let count = select["limitCount"] as? Node { sql += "\nLIMIT \(try self.limit(count))" }
        if let offset = select["limitOffset"] as? Node { sql += "\nOFFSET \(try self.limit(offset))" }
        return .rewritten(sql: sql, rollup: level.table)
    }

    // MARK: Select list

    func classifyTarget(_ value: Node) throws -> (Output, String) {
        if let column = try self.column(value) {
            guard column == self.schema.instrumentColumn else { throw Unsupported("the column \(column) is selected") }
            return (.instrument, column)
        }
        guard let call = value["FuncCall"] as? Node else { throw Unsupported("an expression in the select list") }
        let name = try self.functionName(call)
        let args = call["args"] as? [Node] ?? []
        let columns = try args.map { try self.column($0) }
        switch name {
        case "time_bucket":
            return (.bucket, name)
        case "first", "last":
            guard columns == [self.schema.priceColumn, self.schema.timeColumn] else {
                throw Unsupported("\(name) of something other than (\(self.schema.priceColumn), \(self.schema.timeColumn))")
            }
            return (name == "first" ? .first : .last, name)
        case "max", "min":
            guard columns == [self.schema.priceColumn] else { throw Unsupported("\(name) of something other than \(self.schema.priceColumn)") }
            return (name == "max" ? .max : .min, name)
        case "sum", "avg":
            guard columns == [self.schema.sizeColumn] else { throw Unsupported("\(name) of something other than \(self.schema.sizeColumn)") }
            return (name == "sum" ? .sum : .avg, name)
        case "count":
            if call["agg_star"] as? Bool == true { return (.count, name) }
            guard columns.count == 1, let column = columns[0], self.schema.notNullColumns.contains(column) else {
                throw Unsupported("count of an expression")
            }
            return (.count, name)
        default:
            throw Unsupported("the function \(name)")
        }
    }

    /// The unqualified name of a plain call (no DISTINCT, FILTER, ORDER BY within, or OVER).
    func functionName(_ call: Node) throws -> String {
        for key in ["agg_order", "agg_filter", "agg_within_group", "agg_distinct", "func_variadic", "over"] where call[key] != nil {
            if let flag = call[key] as? Bool, !flag { continue }
            throw Unsupported("an aggregate with \(key)")
        }
        guard let names = call["funcname"] as? [Node], names.count == 1,
            let name = (names[0]["String"] as? Node)?["sval"] as? String
        else { throw Unsupported("a qualified function name") }
        return name
    }

    /// The width argument of `time_bucket(width, time)` and its value.
    func bucketWidth(_ value: Node) throws -> (node: Node, micros: Int64) {
        guard let call = value["FuncCall"] as? Node, try self.functionName(call) == "time_bucket",
            let args = call["args"] as? [Node], args.count == 2, try self.column(args[1]) == self.schema.timeColumn
        else { throw Unsupported("time_bucket with an origin, a time zone or another column") }
        var widthNode = args[0]
        if let cast = widthNode["TypeCast"] as? Node {
            guard Self.typeName(cast) == "interval", let arg = cast["arg"] as? Node else { throw Unsupported("a bucket width that is not an interval") }
            widthNode = arg
        }
        guard let constant = widthNode["A_Const"] as? Node, let text = (constant["sval"] as? Node)?["sval"] as? String,
            let micros = RollupRewriter.intervalMicros(text)
        else { throw Unsupported("a bucket width that is not a fixed interval literal") }
        return (args[0], micros)
    }

    // MARK: GROUP BY and ORDER BY

    enum GroupItem {
        case bucket(Node)
        case instrument
    }

    func resolveGroupItem(_ item: Node, targets: [Target]) throws -> GroupItem {
        if let position = Self.integer(item) {
            guard position >= 1 && position <= targets.count else { throw Unsupported("GROUP BY position out of range") }
            let target = targets[position - 1]
            switch target.output {
            case .bucket: return .bucket(target.node)
            case .instrument: return .instrument
            default: throw Unsupported("GROUP BY an aggregate")
            }
        }
        if let column = try self.column(item) {
            // GROUP BY resolves a name as a column first, then as an output name.
            if column == self.schema.instrumentColumn { return .instrument }
            if self.schema.columns.contains(column) { throw Unsupported("GROUP BY \(column)") }
            guard let target = targets.first(where: { $0.name == column }) else { throw Unsupported("GROUP BY \(column)") }
            switch target.output {
            case .bucket: return .bucket(target.node)
            case .instrument: return .instrument
            default: throw Unsupported("GROUP BY an aggregate")
            }
        }
        if item["FuncCall"] != nil {
            _ = try self.bucketWidth(item)
            return .bucket(item)
        }
        throw Unsupported("an unsupported GROUP BY item")
    }

    func sortItem(_ item: Node, targets: [Target], bucketSQL: String, width: Node) throws -> String {
        guard let sort = item["SortBy"] as? Node, let node = sort["node"] as? Node else { throw Unsupported("ORDER BY") }
        guard sort["useOp"] == nil else { throw Unsupported("ORDER BY … USING") }
        var sql: String
        if let position = Self.integer(node) {
            guard position >= 1 && position <= targets.count else { throw Unsupported("ORDER BY position out of range") }
            sql = "\(position)"
        } else if let column = try self.column(node) {
            // ORDER BY resolves a bare name as an output name first, then as a column.
            let qualified = (node["ColumnRef"] as? Node)?["fields"] as? [Node] ?? []
            if qualified.count == 1, targets.contains(where: { $0.name == column }) {
                sql = Self.identifier(column)
            } else if column == self.schema.instrumentColumn {
                sql = "tg.symbol"
            } else {
                throw Unsupported("ORDER BY \(column)")
            }
        } else if node["FuncCall"] != nil, let sortWidth = try? self.bucketWidth(node), Self.same(sortWidth.node, width) {
            sql = bucketSQL
        } else {
            throw Unsupported("an unsupported ORDER BY item")
        }
        switch sort["sortby_dir"] as? String ?? "SORTBY_DEFAULT" {
        case "SORTBY_DEFAULT": break
        case "SORTBY_ASC": sql += " ASC"
        case "SORTBY_DESC": sql += " DESC"
        default: throw Unsupported("ORDER BY direction")
        }
        switch sort["sortby_nulls"] as? String ?? "SORTBY_NULLS_DEFAULT" {
        case "SORTBY_NULLS_DEFAULT": break
        case "SORTBY_NULLS_FIRST": sql += " NULLS FIRST"
        case "SORTBY_NULLS_LAST": sql += " NULLS LAST"
        default: throw Unsupported("ORDER BY NULLS")
        }
        return sql
    }

    func limit(_ node: Node) throws -> String {
        if let constant = node["A_Const"] as? Node {
            if constant["isnull"] as? Bool == true { return "NULL" }
            if let value = Self.integer(node) { return "\(value)" }
            throw Unsupported("a LIMIT that is not a whole number")
        }
        if let parameter = node["ParamRef"] as? Node, let number = parameter["number"] as? Int { return "$\(number)" }
        throw Unsupported("a LIMIT expression")
    }

    // MARK: WHERE

    static func conjuncts(_ node: Node) -> [Node] {
        if let bool = node["BoolExpr"] as? Node, bool["boolop"] as? String == "AND_EXPR", let args = bool["args"] as? [Node] {
            return args.flatMap { Self.conjuncts($0) }
        }
        return [node]
    }

    static let flipped = ["=": "=", "<": ">", "<=": ">=", ">": "<", ">=": "<=", "<>": "<>", "!=": "<>"]

    func classifyCondition(
        _ node: Node, lowers: inout [(sql: String, inclusive: Bool)], uppers: inout [(sql: String, inclusive: Bool)],
        timeConditions: inout [(op: String, sql: String)], between: inout [(String, String)],
        instrument: inout [(String) -> String], singleInstrument: inout Bool
    ) throws {
        guard let expr = node["A_Expr"] as? Node, let kind = expr["kind"] as? String,
            let names = expr["name"] as? [Node], names.count == 1, let op = (names[0]["String"] as? Node)?["sval"] as? String,
            let left = expr["lexpr"] as? Node, let right = expr["rexpr"] as? Node
        else { throw Unsupported("a condition other than a comparison") }
        switch kind {
        case "AEXPR_OP":
            var column = try self.column(left)
            var operation = op
            var other = right
            if column == nil, let swapped = try self.column(right) {
                column = swapped
                other = left
                guard let flip = Self.flipped[op] else { throw Unsupported("the operator \(op)") }
                operation = flip
            }
            guard let column else { throw Unsupported("a condition on no column") }
            let value = try self.constant(other)
            if column == self.schema.timeColumn {
                switch operation {
                case "=":
                    lowers.append((value, true))
                    uppers.append((value, true))
                case ">=": lowers.append((value, true))
                case ">": lowers.append((value, false))
                case "<=": uppers.append((value, true))
                case "<": uppers.append((value, false))
                default: throw Unsupported("the operator \(operation) on \(column)")
                }
                timeConditions.append((operation, value))
            } else if column == self.schema.instrumentColumn {
                guard ["=", "<>", "!=", "<", "<=", ">", ">="].contains(operation) else { throw Unsupported("the operator \(operation)") }
                instrument.append { "\($0) \(operation == "!=" ? "<>" : operation) \(value)" }
                if operation == "=" { singleInstrument = true }
            } else {
                throw Unsupported("a condition on \(column), which the rollups do not keep")
            }
        case "AEXPR_OP_ANY":
            guard op == "=", try self.column(left) == self.schema.instrumentColumn else { throw Unsupported("an ANY condition") }
            let value = try self.constant(right)
            instrument.append { "\($0) = ANY (\(value))" }
        case "AEXPR_IN":
            guard try self.column(left) == self.schema.instrumentColumn, op == "=" || op == "<>",
                let items = (right["List"] as? Node)?["items"] as? [Node], !items.isEmpty
            else { throw Unsupported("an IN condition") }
            let list = try items.map { try self.constant($0) }.joined(separator: ", ")
            if op == "=" && items.count == 1 { singleInstrument = true }
            instrument.append { "\($0) \(op == "=" ? "IN" : "NOT IN") (\(list))" }
        case "AEXPR_BETWEEN":
            guard try self.column(left) == self.schema.timeColumn, let items = (right["List"] as? Node)?["items"] as? [Node],
                items.count == 2
            else { throw Unsupported("a BETWEEN condition") }
            let low = try self.constant(items[0])
            let high = try self.constant(items[1])
            lowers.append((low, true))
            uppers.append((high, true))
            between.append((low, high))
        default:
            throw Unsupported("a \(kind) condition")
        }
    }

    // MARK: Expressions

    /// The relation's column a ColumnRef names (nil for anything else); a column of another relation is
    /// an error.
    func column(_ node: Node) throws -> String? {
        guard let ref = node["ColumnRef"] as? Node, let fields = ref["fields"] as? [Node] else { return nil }
        let names = fields.compactMap { ($0["String"] as? Node)?["sval"] as? String }
        guard names.count == fields.count else { throw Unsupported("a * column reference") }
        switch names.count {
        case 1: return names[0]
        case 2:
            guard names[0] == self.qualifier else { throw Unsupported("a column of \(names[0])") }
            return names[1]
        default: throw Unsupported("a qualified column reference")
        }
    }

    /// A constant (literals, parameters, casts, now()/CURRENT_TIMESTAMP and +/- of those) as SQL text.
    func constant(_ node: Node) throws -> String {
        if let constant = node["A_Const"] as? Node {
            if constant["isnull"] as? Bool == true { return "NULL" }
            if let string = (constant["sval"] as? Node)?["sval"] as? String ?? (constant["sval"] != nil ? "" : nil) {
                guard !string.contains("\\") else { throw Unsupported("a string literal with a backslash") }
                return Self.literal(string)
            }
            if let value = Self.integer(node) { return value < 0 ? "(\(value))" : "\(value)" }
            if let float = constant["fval"] as? Node {
                let text = float["fval"] as? String ?? "0"
                guard text.allSatisfy({ $0.isNumber || $0 == "." || $0 == "-" || $0 == "e" || $0 == "E" || $0 == "+" }) else {
                    throw Unsupported("a numeric literal")
                }
                return "(\(text))"
            }
            if let bool = constant["boolval"] as? Node { return (bool["boolval"] as? Bool ?? false) ? "true" : "false" }
            throw Unsupported("a literal")
        }
        if let parameter = node["ParamRef"] as? Node, let number = parameter["number"] as? Int { return "$\(number)" }
        if let cast = node["TypeCast"] as? Node, let arg = cast["arg"] as? Node {
            guard let type = Self.typeName(cast) else { throw Unsupported("a cast to a type with modifiers") }
            return "CAST(\(try self.constant(arg)) AS \(type))"
        }
        if let call = node["FuncCall"] as? Node {
            let name = try self.functionName(call)
            guard name == "now", (call["args"] as? [Node] ?? []).isEmpty else { throw Unsupported("the function \(name) in a condition") }
            return "now()"
        }
        if let function = node["SQLValueFunction"] as? Node {
            switch function["op"] as? String {
            case "SVFOP_CURRENT_TIMESTAMP": return "CURRENT_TIMESTAMP"
            case "SVFOP_CURRENT_DATE": return "CURRENT_DATE"
            case "SVFOP_LOCALTIMESTAMP": return "LOCALTIMESTAMP"
            default: throw Unsupported("a special value function")
            }
        }
        if let expr = node["A_Expr"] as? Node, expr["kind"] as? String == "AEXPR_OP",
            let names = expr["name"] as? [Node], names.count == 1,
            let op = (names[0]["String"] as? Node)?["sval"] as? String, op == "+" || op == "-",
            let left = expr["lexpr"] as? Node, let right = expr["rexpr"] as? Node
        {
            return "(\(try self.constant(left)) \(op) \(try self.constant(right)))"
        }
        throw Unsupported("an expression that is not a constant")
    }

    static func integer(_ node: Node) -> Int? {
        guard let constant = node["A_Const"] as? Node, let ival = constant["ival"] as? Node else { return nil }
        return ival["ival"] as? Int ?? 0
    }

    /// The type of a cast as SQL text (names quoted), or nil when it has modifiers or array bounds.
    static func typeName(_ cast: Node) -> String? {
        guard let type = cast["typeName"] as? Node, type["typmods"] == nil, type["arrayBounds"] == nil,
            type["setof"] as? Bool != true, let names = type["names"] as? [Node]
        else { return nil }
        let parts = names.compactMap { ($0["String"] as? Node)?["sval"] as? String }
        guard parts.count == names.count, !parts.isEmpty else { return nil }
        // The grammar's own spellings (pg_catalog.timestamptz, pg_catalog.interval) are kept as they are.
        if parts.count == 2 && parts[0] == "pg_catalog" { return "pg_catalog.\(Self.identifier(parts[1]))" }
        if parts.count == 1 { return Self.identifier(parts[0]) }
        return parts.map(Self.identifier).joined(separator: ".")
    }

    static func literal(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "''") + "'"
    }

    static func identifier(_ name: String) -> String {
        let plain = !name.isEmpty && name.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F }
            && !(name.utf8.first.map { $0 >= 0x30 && $0 <= 0x39 } ?? true)
        if plain && !Self.reserved.contains(name) { return name }
        return "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// Words that must be quoted as identifiers (a conservative list: quoting one that needs none is harmless).
    static let reserved: Set<String> = [
        "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "both", "case", "cast", "check",
        "collate", "column", "constraint", "create", "current_catalog", "current_date", "current_role", "current_time",
        "current_timestamp", "current_user", "default", "deferrable", "desc", "distinct", "do", "else", "end", "except",
        "false", "fetch", "for", "foreign", "from", "grant", "group", "having", "in", "initially", "intersect", "into",
        "lateral", "leading", "limit", "localtime", "localtimestamp", "not", "null", "offset", "on", "only", "or",
        "order", "placing", "primary", "references", "returning", "select", "session_user", "some", "symmetric",
        "table", "then", "to", "trailing", "true", "union", "unique", "user", "using", "variadic", "when", "where",
        "window", "with", "open", "close", "high", "low", "first", "last", "count", "sum", "avg", "max", "min",
    ]

    /// Two parse-tree nodes are the same but for their locations.
    static func same(_ a: Any, _ b: Any) -> Bool {
        Self.strip(a) == Self.strip(b)
    }

    static func strip(_ value: Any) -> String {
        if let object = value as? Node {
            return "{" + object.keys.sorted().filter { $0 != "location" }.map { "\($0):\(Self.strip(object[$0]!))" }.joined(separator: ",") + "}"
        }
        if let array = value as? [Any] { return "[" + array.map(Self.strip).joined(separator: ",") + "]" }
        return "\(value)"
    }
}
