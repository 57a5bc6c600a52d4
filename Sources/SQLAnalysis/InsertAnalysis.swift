import CPgQuery
import Foundation

/// How a VALUES item of a batchable INSERT is computed from its row's values: a value (a constant of the
/// text or a bound parameter), a cast of an expression, or a call of a function on expressions.
public indirect enum InsertExpression: Sendable, Hashable {
    /// The row's value in this slot (0-based within the row).
    case slot(Int)
    /// `CAST(expr AS type)`; `type` is SQL text (`"pg_catalog"."numeric"(10, 2)`).
    case cast(InsertExpression, type: String)
    /// `function(args…)`; `function` is SQL text (quoted, possibly schema-qualified), `name` the unquoted
    /// name for the function catalog (`to_timestamp`, `pg_catalog.to_timestamp`).
    case call(function: String, name: String, arguments: [InsertExpression])

    /// The expression as SQL, with each slot written by `slot`.
    public func sql(_ slot: (Int) -> String) -> String {
        switch self {
        case .slot(let index): return slot(index)
        case .cast(let inner, let type): return "CAST(\(inner.sql(slot)) AS \(type))"
        case .call(let function, _, let arguments): return "\(function)(\(arguments.map { $0.sql(slot) }.joined(separator: ", ")))"
        }
    }

    func collectFunctions(into names: inout [String]) {
        switch self {
        case .slot: break
        case .cast(let inner, _): inner.collectFunctions(into: &names)
        case .call(_, let name, let arguments):
            names.append(name)
            for argument in arguments { argument.collectFunctions(into: &names) }
        }
    }
}

/// The type a slot's values are sent with. Constants keep the type PostgreSQL gives them as literals
/// (an integer is int4, a larger one int8, a decimal numeric, TRUE bool, a string or NULL unknown);
/// a parameter has the type the client declared for it, or the one PostgreSQL infers.
public enum InsertSlotClass: Sendable, Hashable {
    case unknown
    case int4
    case int8
    case numeric
    case bool
    /// A bound parameter (1-based number).
    case parameter(Int)

    /// The OID the slot is declared with when the statement is prepared (0: PostgreSQL infers it).
    public func declaredOID(parameterTypes: [UInt32]) -> UInt32 {
        switch self {
        case .unknown: return 0
        case .int4: return 23
        case .int8: return 20
        case .numeric: return 1700
        case .bool: return 16
        case .parameter(let number): return number <= parameterTypes.count ? parameterTypes[number - 1] : 0
        }
    }

    /// int4 < int8 < numeric: a slot holding integers and decimals in different rows of one statement is sent
    /// as the widest (each row is coerced to its column on its own either way, with the same result).
    static func widen(_ a: InsertSlotClass, _ b: InsertSlotClass) -> InsertSlotClass? {
        if a == b { return a }
        if case .parameter = a, case .parameter = b { return a }
        let rank: [InsertSlotClass: Int] = [.int4: 0, .int8: 1, .numeric: 2]
        guard let ra = rank[a], let rb = rank[b] else { return nil }
        return ra > rb ? a : b
    }
}

/// One value of a row: the text of a constant (nil for NULL) or a bound parameter (1-based).
public enum InsertValue: Sendable, Hashable {
    case constant(String?)
    case parameter(Int)
}

/// A statement the insert batcher may take: `INSERT INTO rel [(cols)] VALUES (…)[, (…)]` whose items are
/// constants, parameters, casts and function calls of them, every row of the same shape.
public struct InsertShape: Sendable, Equatable {
    /// As written (nil: unqualified).
    public var schema: String?
    public var relation: String
    /// The column list (empty: the table's columns in order).
    public var columns: [String]
    /// The items of a row, in terms of that row's slots.
    public var items: [InsertExpression]
    /// The class of each slot, the same for every row.
    public var slotClasses: [InsertSlotClass]
    /// The values of each row, one per slot.
    public var rows: [[InsertValue]]
    /// Functions called (for the volatility check against the database's catalog).
    public var functions: [String]
    /// The highest `$n`.
    public var parameterCount: Int

    /// The OID each slot is declared with, or nil when rows bind parameters of different declared types to
    /// one slot.
    public func declaredOIDs(parameterTypes: [UInt32]) -> [UInt32]? {
        var oids = self.slotClasses.map { $0.declaredOID(parameterTypes: parameterTypes) }
        for row in self.rows {
            for (slot, value) in row.enumerated() {
                guard case .parameter(let number) = value else { continue }
                let oid = number <= parameterTypes.count ? parameterTypes[number - 1] : 0
                if oid != oids[slot] { return nil }
                oids[slot] = oid
            }
        }
        return oids
    }

    /// `"schema"."relation"` or `"relation"`.
    public var qualifiedName: String {
        (self.schema.map { InsertAnalyzer.quote($0) + "." } ?? "") + InsertAnalyzer.quote(self.relation)
    }

    /// ` ("a", "b")` or the empty string.
    public var columnListSQL: String {
        self.columns.isEmpty ? "" : " (" + self.columns.map(InsertAnalyzer.quote).joined(separator: ", ") + ")"
    }

    /// What statements of one batch share: the target, the columns, the row shape and the slot classes. Set
    /// once by the analyzer (it is part of every statement's group key).
    public internal(set) var template = ""

    /// One row of the statement with each slot a parameter: `INSERT INTO "t" ("a") VALUES ($1)`.
    public var oneRowSQL: String {
        "INSERT INTO \(self.qualifiedName)\(self.columnListSQL) VALUES (" + self.items.map { $0.sql { "$\($0 + 1)" } }.joined(separator: ", ") + ")"
    }

    func makeTemplate() -> String {
        var text = self.oneRowSQL + " -- "
        for slotClass in self.slotClasses {
            switch slotClass {
            case .unknown: text += "u,"
            case .int4: text += "i4,"
            case .int8: text += "i8,"
            case .numeric: text += "n,"
            case .bool: text += "b,"
            case .parameter: text += "p,"
            }
        }
        return text
    }
}

/// Recognizes batchable INSERTs in the real PostgreSQL parse tree. Anything it does not fully understand is
/// not batchable (and goes to the primary unchanged).
public enum InsertAnalyzer {
    /// The shape of `sql`, or why it is not batchable.
    public static func analyze(_ sql: String) -> Result<InsertShape, InsertRefusal> {
        let result = pg_query_parse(sql)
        defer { pg_query_free_parse_result(result) }
        guard result.error == nil, let tree = result.parse_tree,
            let json = try? JSONSerialization.jsonObject(with: Data(String(cString: tree).utf8)) as? [String: Any]
        else { return .failure(InsertRefusal("the statement does not parse")) }
        let source = Array(sql.utf8)
        let statements = json["stmts"] as? [[String: Any]] ?? []
        guard statements.count == 1, let statement = statements[0]["stmt"] as? [String: Any],
            let insert = statement["InsertStmt"] as? [String: Any]
        else { return .failure(InsertRefusal("not a single INSERT")) }
        let target = (insert["relation"] as? [String: Any])?["relname"] as? String
        func refuse(_ reason: String) -> Result<InsertShape, InsertRefusal> { .failure(InsertRefusal(reason, relation: target)) }
        if insert["returningList"] != nil { return refuse("RETURNING") }
        if insert["onConflictClause"] != nil { return refuse("ON CONFLICT") }
        if insert["withClause"] != nil { return refuse("WITH") }
        if let override = insert["override"] as? String, override != "OVERRIDING_NOT_SET" {
            return refuse("OVERRIDING")
        }
        guard let relation = insert["relation"] as? [String: Any], let name = relation["relname"] as? String else {
            return refuse("no target relation")
        }
        if relation["catalogname"] != nil { return refuse("a database-qualified name") }
        if relation["alias"] != nil { return refuse("an alias") }
        var columns: [String] = []
        for column in insert["cols"] as? [[String: Any]] ?? [] {
            guard let target = column["ResTarget"] as? [String: Any], let name = target["name"] as? String,
                target["indirection"] == nil
            else { return refuse("a column with subscripts or fields") }
            columns.append(name)
        }
        guard let selectNode = (insert["selectStmt"] as? [String: Any])?["SelectStmt"] as? [String: Any],
            let lists = selectNode["valuesLists"] as? [[String: Any]], !lists.isEmpty
        else { return refuse("not INSERT … VALUES") }
        for key in ["withClause", "sortClause", "limitCount", "limitOffset", "lockingClause"] where selectNode[key] != nil {
            return refuse("VALUES with \(key)")
        }
        var shape = InsertShape(
            schema: relation["schemaname"] as? String, relation: name, columns: columns, items: [], slotClasses: [], rows: [],
            functions: [], parameterCount: 0)
        for (index, list) in lists.enumerated() {
            guard let items = (list["List"] as? [String: Any])?["items"] as? [[String: Any]] else {
                return refuse("an empty VALUES row")
            }
            var row = RowBuilder(source: source)
            var expressions: [InsertExpression] = []
            for item in items {
                guard let expression = row.expression(item) else {
                    return refuse(row.refusal ?? "an expression other than constants, parameters, casts and calls")
                }
                expressions.append(expression)
            }
            if !columns.isEmpty && expressions.count != columns.count {
                return refuse("VALUES lists and columns differ in number")
            }
            if index == 0 {
                shape.items = expressions
                shape.slotClasses = row.classes
            } else {
                guard expressions == shape.items, row.classes.count == shape.slotClasses.count else {
                    return refuse("rows of different shapes")
                }
                for slot in row.classes.indices {
                    // NULL fits any slot; numbers widen; anything else must match.
                    if row.values[slot] == .constant(nil) && row.classes[slot] == .unknown { continue }
                    if shape.slotClasses[slot] == .unknown && shape.rows.allSatisfy({ $0[slot] == .constant(nil) }) {
                        shape.slotClasses[slot] = row.classes[slot]
                        continue
                    }
                    guard let widened = InsertSlotClass.widen(shape.slotClasses[slot], row.classes[slot]) else {
                        return refuse("rows of different shapes")
                    }
                    shape.slotClasses[slot] = widened
                }
            }
            shape.rows.append(row.values)
            shape.parameterCount = max(shape.parameterCount, row.maxParameter)
        }
        for item in shape.items { item.collectFunctions(into: &shape.functions) }
        shape.template = shape.makeTemplate()
        return .success(shape)
    }

    /// A double-quoted identifier.
    public static func quote(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// Builds one row's expressions and values.
    struct RowBuilder {
        /// The statement's bytes: integer constants are read from the text at their location (the parse
        /// tree's JSON leaves out negative int4 values).
        let source: [UInt8]
        var classes: [InsertSlotClass] = []
        var values: [InsertValue] = []
        var maxParameter = 0
        var refusal: String?

        mutating func slot(_ value: InsertValue, _ slotClass: InsertSlotClass) -> InsertExpression {
            self.values.append(value)
            self.classes.append(slotClass)
            return .slot(self.values.count - 1)
        }

        mutating func expression(_ node: [String: Any]) -> InsertExpression? {
            if let constant = node["A_Const"] as? [String: Any] {
                return self.constant(constant)
            }
            if let parameter = node["ParamRef"] as? [String: Any] {
                guard let number = parameter["number"] as? Int, number >= 1, number <= 65_535 else { return nil }
                self.maxParameter = max(self.maxParameter, number)
                return self.slot(.parameter(number), .parameter(number))
            }
            if let cast = node["TypeCast"] as? [String: Any] {
                guard let argument = cast["arg"] as? [String: Any], let typeName = cast["typeName"] as? [String: Any],
                    let type = Self.typeSQL(typeName), let inner = self.expression(argument)
                else { return nil }
                return .cast(inner, type: type)
            }
            if let call = node["FuncCall"] as? [String: Any] {
                for key in ["agg_order", "agg_filter", "over", "agg_within_group", "agg_star", "agg_distinct", "func_variadic"]
                where call[key] != nil {
                    if let flag = call[key] as? Bool, !flag { continue }
                    self.refusal = "a function call with \(key)"
                    return nil
                }
                if let format = call["funcformat"] as? String, format != "COERCE_EXPLICIT_CALL" {
                    // SQL-standard syntax (EXTRACT, SUBSTRING … FROM, CURRENT_…) is not rebuilt.
                    self.refusal = "special function syntax"
                    return nil
                }
                guard let nameNodes = call["funcname"] as? [[String: Any]], !nameNodes.isEmpty else { return nil }
                var parts: [String] = []
                for part in nameNodes {
                    guard let text = (part["String"] as? [String: Any])?["sval"] as? String else { return nil }
                    parts.append(text)
                }
                var arguments: [InsertExpression] = []
                for argument in call["args"] as? [[String: Any]] ?? [] {
                    guard let expression = self.expression(argument) else { return nil }
                    arguments.append(expression)
                }
                return .call(
                    function: parts.map(InsertAnalyzer.quote).joined(separator: "."), name: parts.joined(separator: "."),
                    arguments: arguments)
            }
            return nil
        }

        mutating func constant(_ node: [String: Any]) -> InsertExpression? {
            if node["isnull"] as? Bool == true { return self.slot(.constant(nil), .unknown) }
            if let string = node["sval"] as? [String: Any] {
                return self.slot(.constant(string["sval"] as? String ?? ""), .unknown)
            }
            if let integer = node["ival"] as? [String: Any] {
                guard let location = node["location"] as? Int, let text = Self.integerText(self.source, at: location),
                    let value = Int64(text), value >= Int64(Int32.min), value <= Int64(Int32.max),
                    (integer["ival"] as? Int).map({ Int64($0) == value }) ?? true
                else {
                    self.refusal = "an integer constant Tidegate cannot read"
                    return nil
                }
                return self.slot(.constant(text), .int4)
            }
            if let float = node["fval"] as? [String: Any], let text = float["fval"] as? String {
                // The parser makes a Float of any number that is not an int4; PostgreSQL then types it int8
                // when it is an integer that fits, numeric otherwise.
                let isInteger = !text.contains(where: { $0 == "." || $0 == "e" || $0 == "E" })
                if isInteger && Int64(text) != nil { return self.slot(.constant(text), .int8) }
                if text.hasPrefix("0x") || text.hasPrefix("0o") || text.hasPrefix("0b") || text.contains("_") {
                    self.refusal = "a non-decimal number"
                    return nil
                }
                return self.slot(.constant(text), .numeric)
            }
            if let boolean = node["boolval"] as? [String: Any] {
                return self.slot(.constant(boolean["boolval"] as? Bool == true ? "t" : "f"), .bool)
            }
            if node["bsval"] != nil {
                self.refusal = "a bit-string constant"
                return nil
            }
            return nil
        }

        /// `[-] digits` at `location` (spaces may follow the minus sign), as a canonical integer text.
        static func integerText(_ source: [UInt8], at location: Int) -> String? {
            guard location >= 0, location < source.count else { return nil }
            var index = location
            var negative = false
            if source[index] == UInt8(ascii: "-") {
                negative = true
                index += 1
                while index < source.count, source[index] == 32 || source[index] == 9 || source[index] == 10 || source[index] == 13 {
                    index += 1
                }
            }
            var digits: [UInt8] = []
            while index < source.count, source[index] >= 48, source[index] <= 57 {
                digits.append(source[index])
                index += 1
            }
            guard !digits.isEmpty, digits.count < 12 else { return nil }
            if index < source.count {
                let next = source[index] | 0x20
                // 0x1F, 1_000, 12e3 and the like are other tokens.
                if (next >= 97 && next <= 122) || source[index] == UInt8(ascii: "_") || source[index] == UInt8(ascii: ".") { return nil }
            }
            guard let value = Int64(String(decoding: digits, as: UTF8.self)) else { return nil }
            return String(negative ? -value : value)
        }

        /// A type name as SQL: quoted names, integer modifiers, array bounds. INTERVAL's field modifiers and
        /// %TYPE are not rebuilt.
        static func typeSQL(_ node: [String: Any]) -> String? {
            guard let names = node["names"] as? [[String: Any]], !names.isEmpty, node["pct_type"] == nil, node["setof"] == nil
            else { return nil }
            var parts: [String] = []
            for part in names {
                guard let text = (part["String"] as? [String: Any])?["sval"] as? String else { return nil }
                parts.append(text)
            }
            if parts.last == "interval", node["typmods"] != nil { return nil }
            var sql = parts.map(InsertAnalyzer.quote).joined(separator: ".")
            if let modifiers = node["typmods"] as? [[String: Any]] {
                var values: [String] = []
                for modifier in modifiers {
                    guard let constant = modifier["A_Const"] as? [String: Any], let integer = constant["ival"] as? [String: Any]
                    else { return nil }
                    values.append(String(integer["ival"] as? Int ?? 0))
                }
                sql += "(" + values.joined(separator: ", ") + ")"
            }
            if let bounds = node["arrayBounds"] as? [[String: Any]] {
                sql += String(repeating: "[]", count: bounds.count)
            }
            return sql
        }
    }
}

/// Why a statement is not batchable.
public struct InsertRefusal: Error, Sendable, Equatable {
    public var reason: String
    /// The target relation, when the statement is an INSERT.
    public var relation: String?
    public init(_ reason: String, relation: String? = nil) {
        self.reason = reason
        self.relation = relation
    }
}
