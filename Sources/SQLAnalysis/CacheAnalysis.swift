import CPgQuery
import Foundation

/// A value in a condition: a constant of the query text or a bound parameter.
public enum ConditionValue: Sendable, Hashable {
    /// The constant's text as written (`'2026-11-30 14:31+00'` gives `2026-11-30 14:31+00`).
    case literal(String)
    /// `$n` (1-based).
    case parameter(Int)
}

/// One side of a time condition: `ts >= value (+ offset)`, where the offset is a fixed interval added
/// to the value (`$2 + interval '1 day'`). `slackMicros` widens the bound outward when the offset is
/// only known within a margin (a day is 23–25 hours across a daylight-saving change).
public struct TimeBound: Sendable, Hashable {
    public var value: ConditionValue
    public var offsetMicros: Int64 = 0
    public var slackMicros: Int64 = 0
    /// `>=`/`<=` (true) or `>`/`<` (false).
    public var inclusive: Bool

    public init(value: ConditionValue, offsetMicros: Int64 = 0, slackMicros: Int64 = 0, inclusive: Bool) {
        self.value = value
        self.offsetMicros = offsetMicros
        self.slackMicros = slackMicros
        self.inclusive = inclusive
    }
}

/// What a cached result of one relation depends on: the instants and instruments its rows can come
/// from. Whatever the WHERE clause does not pin down is unbounded ("all").
public struct RelationDependency: Sendable, Hashable {
    public var relation: String
    /// Lower bounds (`ts >= a`, `ts > a`, `BETWEEN a AND …`, `ts = a`): the range starts at the largest.
    public var lowerBounds: [TimeBound] = []
    public var upperBounds: [TimeBound] = []
    /// nil: every instrument. Otherwise the instruments named by `=` or `IN`.
    public var instruments: [ConditionValue]?

    public init(relation: String) { self.relation = relation }

    public var isUnbounded: Bool { self.lowerBounds.isEmpty && self.upperBounds.isEmpty && self.instruments == nil }
}

/// The columns of a market-data relation that the cache keys its dependencies on.
public struct MarketRelation: Sendable, Hashable {
    public var name: String
    public var timeColumn: String
    public var instrumentColumn: String

    public init(name: String, timeColumn: String, instrumentColumn: String) {
        self.name = name
        self.timeColumn = timeColumn
        self.instrumentColumn = instrumentColumn
    }
}

/// Whether a query text may be answered from the result cache, and what its result depends on.
public struct CacheProfile: Sendable, Equatable {
    /// Why the text is never cached; nil when it may be (subject to the function check).
    public var refusal: String?
    public var dependencies: [RelationDependency] = []
    /// Functions called (lower case, qualified as written): each must be safe to cache (immutable, or
    /// stable and depending only on settings in the key).
    public var functions: [String] = []
    /// PostgreSQL's fingerprint of the statement (constants ignored), for statistics and per-query settings.
    public var fingerprint: String = ""
    /// `/* tidegate: max_staleness=2s */`: an entry filled less than this long ago is served even if it moved.
    public var maxStalenessSeconds: Double?
    /// `/* tidegate: cache=off */`.
    public var hintOff = false
    /// The number of `$n` parameters the text refers to (the highest n).
    public var parameterCount = 0

    public init(refusal: String) { self.refusal = refusal }

    init() {}

    public var isCacheable: Bool { self.refusal == nil }
}

/// Decides cacheability from the real PostgreSQL parse tree. Only a single plain SELECT whose relations
/// are all declared market data qualifies: no INTO, no locking clause, no data-modifying WITH, no
/// TABLESAMPLE, no CURRENT_DATE/CURRENT_TIMESTAMP/LOCALTIME-style values (their result moves with the
/// clock). Time and instrument conditions are taken from the top-level AND of each relation's WHERE;
/// conditions under OR or NOT are ignored, which only widens what an entry depends on.
public enum CacheAnalyzer {
    public static func analyze(_ sql: String, relations: [String: MarketRelation]) -> CacheProfile {
        let hint = RoutingHint.parse(sql)
        let result = pg_query_parse(sql)
        defer { pg_query_free_parse_result(result) }
        guard result.error == nil, let tree = result.parse_tree,
            let json = try? JSONSerialization.jsonObject(with: Data(String(cString: tree).utf8)) as? [String: Any]
        else { return CacheProfile(refusal: "the statement does not parse") }
        let statements = json["stmts"] as? [[String: Any]] ?? []
        guard statements.count == 1, let statement = statements[0]["stmt"] as? [String: Any],
            let select = statement["SelectStmt"] as? [String: Any]
        else { return CacheProfile(refusal: "only a single SELECT is cached") }
        var walker = Walker(relations: relations)
        walker.cteNames = Self.cteNames(select)
        walker.visit(select)
        if let refusal = walker.refusal { return CacheProfile(refusal: refusal) }
        if walker.relationsRead.isEmpty { return CacheProfile(refusal: "reads no market-data relation") }
        var profile = CacheProfile()
        profile.functions = walker.functions.sorted()
        profile.parameterCount = walker.maxParameter
        profile.fingerprint = QueryAnalyzer.fingerprint(sql) ?? ""
        profile.maxStalenessSeconds = hint?.maxStalenessSeconds
        profile.hintOff = hint?.cache == false
        // The relation of a plain `SELECT … FROM rel [alias] WHERE …` gets its conditions; every other
        // occurrence of a relation (joins, subqueries) depends on all of it.
        var dependencies: [String: RelationDependency] = [:]
        for name in walker.relationsRead { dependencies[name] = RelationDependency(relation: name) }
        if let (relation, alias) = Self.singleRelation(select, relations: relations), walker.relationOccurrences == 1,
            let whereClause = select["whereClause"] as? [String: Any]
        {
            var dependency = RelationDependency(relation: relation.name)
            for conjunct in Self.conjuncts(whereClause) {
                Self.apply(conjunct, to: &dependency, relation: relation, alias: alias)
            }
            dependencies[relation.name] = dependency
        }
        profile.dependencies = dependencies.values.sorted { $0.relation < $1.relation }
        return profile
    }

    /// The single relation in FROM, when FROM holds just one declared relation and no set operation is
    /// involved.
    static func singleRelation(_ select: [String: Any], relations: [String: MarketRelation]) -> (MarketRelation, String?)? {
        guard select["op"] as? String == nil || select["op"] as? String == "SETOP_NONE",
            let from = select["fromClause"] as? [[String: Any]], from.count == 1,
            let rangeVar = from[0]["RangeVar"] as? [String: Any], let name = rangeVar["relname"] as? String,
            let relation = relations[name]
        else { return nil }
        let alias = (rangeVar["alias"] as? [String: Any])?["aliasname"] as? String
        return (relation, alias)
    }

    /// Every WITH name anywhere in the statement: a RangeVar of that name reads the CTE, not a table.
    static func cteNames(_ value: Any) -> Set<String> {
        var names: Set<String> = []
        if let array = value as? [Any] {
            for element in array { names.formUnion(Self.cteNames(element)) }
        } else if let object = value as? [String: Any] {
            for (key, child) in object {
                if key == "CommonTableExpr", let name = (child as? [String: Any])?["ctename"] as? String { names.insert(name) }
                names.formUnion(Self.cteNames(child))
            }
        }
        return names
    }

    static func conjuncts(_ node: [String: Any]) -> [[String: Any]] {
        if let bool = node["BoolExpr"] as? [String: Any], bool["boolop"] as? String == "AND_EXPR" {
            return (bool["args"] as? [[String: Any]] ?? []).flatMap { Self.conjuncts($0) }
        }
        return [node]
    }

    /// The column a ColumnRef names, when it belongs to the relation (unqualified, or qualified by its
    /// alias or name).
    static func column(_ node: [String: Any], relation: MarketRelation, alias: String?) -> String? {
        guard let ref = node["ColumnRef"] as? [String: Any] else { return nil }
        let fields = (ref["fields"] as? [[String: Any]] ?? []).map { ($0["String"] as? [String: Any])?["sval"] as? String }
        guard let last = fields.last, let name = last else { return nil }
        if fields.count == 2, let qualifier = fields[0] {
            guard qualifier == (alias ?? relation.name) else { return nil }
        } else if fields.count != 1 {
            return nil
        }
        return name
    }

    static func apply(_ conjunct: [String: Any], to dependency: inout RelationDependency, relation: MarketRelation, alias: String?) {
        guard let expr = conjunct["A_Expr"] as? [String: Any], let kind = expr["kind"] as? String,
            let lexpr = expr["lexpr"] as? [String: Any]
        else { return }
        let op = ((expr["name"] as? [[String: Any]])?.last?["String"] as? [String: Any])?["sval"] as? String
        let rexpr = expr["rexpr"] as? [String: Any] ?? [:]
        switch kind {
        case "AEXPR_OP":
            guard let op else { return }
            // Column on either side.
            var column = Self.column(lexpr, relation: relation, alias: alias)
            var other = rexpr
            var effective = op
            if column == nil, let right = Self.column(rexpr, relation: relation, alias: alias) {
                column = right
                other = lexpr
                effective = ["<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "="][op] ?? ""
            }
            guard let column else { return }
            if column == relation.timeColumn {
                guard let bound = Self.timeValue(other) else { return }
                switch effective {
                case ">=": dependency.lowerBounds.append(Self.bound(bound, inclusive: true))
                case ">": dependency.lowerBounds.append(Self.bound(bound, inclusive: false))
                case "<=": dependency.upperBounds.append(Self.bound(bound, inclusive: true))
                case "<": dependency.upperBounds.append(Self.bound(bound, inclusive: false))
                case "=":
                    dependency.lowerBounds.append(Self.bound(bound, inclusive: true))
                    dependency.upperBounds.append(Self.bound(bound, inclusive: true))
                default: return
                }
            } else if column == relation.instrumentColumn, effective == "=", let value = Self.plainValue(other) {
                Self.restrictInstruments(&dependency, to: [value])
            }
        case "AEXPR_IN":
            guard op == "=", Self.column(lexpr, relation: relation, alias: alias) == relation.instrumentColumn,
                let items = (rexpr["List"] as? [String: Any])?["items"] as? [[String: Any]]
            else { return }
            let values = items.compactMap { Self.plainValue($0) }
            guard values.count == items.count else { return }
            Self.restrictInstruments(&dependency, to: values)
        case "AEXPR_BETWEEN":
            guard Self.column(lexpr, relation: relation, alias: alias) == relation.timeColumn,
                let items = (rexpr["List"] as? [String: Any])?["items"] as? [[String: Any]], items.count == 2
            else { return }
            if let low = Self.timeValue(items[0]) { dependency.lowerBounds.append(Self.bound(low, inclusive: true)) }
            if let high = Self.timeValue(items[1]) { dependency.upperBounds.append(Self.bound(high, inclusive: true)) }
        default:
            return
        }
    }

    static func restrictInstruments(_ dependency: inout RelationDependency, to values: [ConditionValue]) {
        // Two conjuncts on the instrument: rows satisfy both, so either list alone is a safe superset;
        // the shorter one is kept.
        if let current = dependency.instruments, current.count <= values.count { return }
        dependency.instruments = values
    }

    static func bound(_ value: (ConditionValue, Int64, Int64), inclusive: Bool) -> TimeBound {
        TimeBound(value: value.0, offsetMicros: value.1, slackMicros: value.2, inclusive: inclusive)
    }

    /// A constant or parameter, possibly cast (`'AAPL'::text`, `$1::text`).
    static func plainValue(_ node: [String: Any]) -> ConditionValue? {
        if let cast = node["TypeCast"] as? [String: Any], let argument = cast["arg"] as? [String: Any] {
            return Self.plainValue(argument)
        }
        if let param = node["ParamRef"] as? [String: Any], let number = param["number"] as? Int { return .parameter(number) }
        if let constant = node["A_Const"] as? [String: Any], let text = (constant["sval"] as? [String: Any])?["sval"] as? String {
            return .literal(text)
        }
        return nil
    }

    /// A time value: a constant or parameter (cast or not), plus or minus a constant interval.
    /// Returns (value, offset, slack) in microseconds.
    static func timeValue(_ node: [String: Any]) -> (ConditionValue, Int64, Int64)? {
        if let expr = node["A_Expr"] as? [String: Any], expr["kind"] as? String == "AEXPR_OP",
            let op = ((expr["name"] as? [[String: Any]])?.last?["String"] as? [String: Any])?["sval"] as? String,
            op == "+" || op == "-", let left = expr["lexpr"] as? [String: Any], let right = expr["rexpr"] as? [String: Any],
            let (value, offset, slack) = Self.timeValue(left), let (delta, deltaSlack) = Self.intervalValue(right)
        {
            return (value, op == "+" ? offset + delta : offset - delta, slack + deltaSlack)
        }
        guard let value = Self.plainValue(node) else { return nil }
        // A numeric constant compared with a timestamp is a type error the server reports; not a bound.
        if let constant = node["A_Const"] as? [String: Any], constant["sval"] == nil { return nil }
        return (value, 0, 0)
    }

    /// `interval '1 day'`, `'90 minutes'::interval`: microseconds and the slack it needs. Days count as 24
    /// hours with 3 hours of slack (a calendar day in a zone with daylight saving is 23 or 25 hours); months
    /// and years have no fixed length and give nil.
    static func intervalValue(_ node: [String: Any]) -> (Int64, Int64)? {
        guard let cast = node["TypeCast"] as? [String: Any],
            let names = (cast["typeName"] as? [String: Any])?["names"] as? [[String: Any]],
            (names.last?["String"] as? [String: Any])?["sval"] as? String == "interval",
            (cast["typeName"] as? [String: Any])?["typmods"] == nil,
            let constant = (cast["arg"] as? [String: Any])?["A_Const"] as? [String: Any],
            let text = (constant["sval"] as? [String: Any])?["sval"] as? String
        else { return nil }
        return Self.parseInterval(text)
    }

    /// `N unit [N unit …]` with units microseconds … weeks (singular, plural or abbreviated).
    static func parseInterval(_ text: String) -> (Int64, Int64)? {
        let words = text.lowercased().split(whereSeparator: { $0 == " " })
        guard !words.isEmpty, words.count % 2 == 0 else { return nil }
        var total: Int64 = 0
        var slack: Int64 = 0
        var index = 0
        while index < words.count {
            guard let amount = Double(words[index]), amount.isFinite, abs(amount) < 1e9 else { return nil }
            let unit = words[index + 1]
            let micros: Int64
            var daySlack: Int64 = 0
            switch unit {
            case "us", "usec", "usecs", "microsecond", "microseconds": micros = 1
            case "ms", "msec", "msecs", "millisecond", "milliseconds": micros = 1_000
            case "s", "sec", "secs", "second", "seconds": micros = 1_000_000
            case "m", "min", "mins", "minute", "minutes": micros = 60_000_000
            case "h", "hr", "hrs", "hour", "hours": micros = 3_600_000_000
            case "d", "day", "days":
                micros = 86_400_000_000
                daySlack = 3 * 3_600_000_000
            case "w", "week", "weeks":
                micros = 7 * 86_400_000_000
                daySlack = 3 * 3_600_000_000
            default: return nil
            }
            total += Int64(amount * Double(micros))
            slack += daySlack
            index += 2
        }
        return (total, slack)
    }

    /// Collects what makes a SELECT uncacheable, the relations it reads and the functions it calls.
    struct Walker {
        let relations: [String: MarketRelation]
        var refusal: String?
        var relationsRead: Set<String> = []
        var relationOccurrences = 0
        var functions: Set<String> = []
        var cteNames: Set<String> = []
        var maxParameter = 0

        init(relations: [String: MarketRelation]) { self.relations = relations }

        static let clockValues: Set<String> = [
            "SVFOP_CURRENT_DATE", "SVFOP_CURRENT_TIME", "SVFOP_CURRENT_TIME_N", "SVFOP_CURRENT_TIMESTAMP",
            "SVFOP_CURRENT_TIMESTAMP_N", "SVFOP_LOCALTIME", "SVFOP_LOCALTIME_N", "SVFOP_LOCALTIMESTAMP",
            "SVFOP_LOCALTIMESTAMP_N",
        ]

        mutating func refuse(_ reason: String) {
            if self.refusal == nil { self.refusal = reason }
        }

        mutating func visit(_ value: Any) {
            if let array = value as? [Any] {
                for element in array { self.visit(element) }
                return
            }
            guard let object = value as? [String: Any] else { return }
            for (key, child) in object {
                switch key {
                case "intoClause": self.refuse("SELECT INTO writes a table")
                case "lockingClause":
                    if let clauses = child as? [Any], !clauses.isEmpty { self.refuse("a locking clause (FOR UPDATE/SHARE)") }
                case "RangeTableSample": self.refuse("TABLESAMPLE is random")
                case "SQLValueFunction":
                    if let op = (child as? [String: Any])?["op"] as? String, Self.clockValues.contains(op) {
                        self.refuse("reads the clock (\(op.dropFirst(6).lowercased()))")
                    }
                case "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt": self.refuse("a data-modifying WITH")
                case "ParamRef":
                    if let number = (child as? [String: Any])?["number"] as? Int { self.maxParameter = max(self.maxParameter, number) }
                case "RangeVar":
                    guard let node = child as? [String: Any], let name = node["relname"] as? String else { continue }
                    if node["schemaname"] == nil && self.cteNames.contains(name) { continue }
                    guard self.relations[name] != nil else {
                        self.refuse("reads \(name), which is not a market-data relation of the config")
                        continue
                    }
                    self.relationsRead.insert(name)
                    self.relationOccurrences += 1
                case "FuncCall":
                    if let node = child as? [String: Any] {
                        let parts = (node["funcname"] as? [[String: Any]] ?? []).compactMap {
                            ($0["String"] as? [String: Any])?["sval"] as? String
                        }
                        let name = parts.first == "pg_catalog" ? parts.dropFirst().joined(separator: ".") : parts.joined(separator: ".")
                        if !name.isEmpty { self.functions.insert(name.lowercased()) }
                        self.visit(node)
                    }
                default:
                    self.visit(child)
                }
            }
        }
    }
}
