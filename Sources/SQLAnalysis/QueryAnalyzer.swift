import CPgQuery
import Foundation

/// What kind of statement a parsed statement is, for routing.
public enum StatementKind: String, Sendable, Equatable {
    case read, write, ddl, transaction, set, show, copyIn, copyOut, utility
}

/// What the PostgreSQL parser says a query string does.
public struct QueryAnalysis: Sendable, Equatable {
    /// One entry per statement.
    public var kinds: [StatementKind] = []
    /// The parse node type of each statement (`SelectStmt`, `DoStmt`, `CallStmt`…).
    public var statementTypes: [String] = []
    /// Relations read and written, as written in the query (`schema.name` when qualified).
    public var relationsRead: Set<String> = []
    public var relationsWritten: Set<String> = []
    /// Functions called, lower-cased, qualified when the query qualifies them.
    public var functions: Set<String> = []
    /// A WITH clause holding INSERT, UPDATE, DELETE or MERGE.
    public var hasDataModifyingCTE = false
    /// FOR UPDATE / FOR SHARE and friends.
    public var hasLockingClause = false
    /// BEGIN / START TRANSACTION READ ONLY (true), READ WRITE (false), or neither (nil).
    public var transactionReadOnly: Bool?

    public init() {}

    /// A read that cannot write: only SELECT-like statements, no data-modifying CTE, no locking clause,
    /// and every function called known not to write (`isSafeFunction` decides, e.g. from pg_proc
    /// volatility and an allow-list). When in doubt, false.
    public func isProvablyReadOnly(isSafeFunction: (String) -> Bool) -> Bool {
        guard !self.kinds.isEmpty, self.kinds.allSatisfy({ $0 == .read || $0 == .show }) else { return false }
        guard !self.hasDataModifyingCTE, !self.hasLockingClause, self.relationsWritten.isEmpty else { return false }
        return self.functions.allSatisfy(isSafeFunction)
    }
}

/// A query the parser rejects: its message and the 1-based character position, as PostgreSQL reports.
public struct QueryParseError: Error, Sendable, Equatable {
    public var message: String
    public var cursorPosition: Int
}

/// libpg_query (the real PostgreSQL parser) behind a small API. Thread-safe: libpg_query keeps its
/// memory per thread. `pg_query_exit` is never called (it corrupts the heap of a thread that parses
/// again).
public enum QueryAnalyzer {
    public static func analyze(_ sql: String) throws(QueryParseError) -> QueryAnalysis {
        let result = pg_query_parse(sql)
        defer { pg_query_free_parse_result(result) }
        if let error = result.error {
            throw QueryParseError(
                message: error.pointee.message.map { String(cString: $0) } ?? "syntax error",
                cursorPosition: Int(error.pointee.cursorpos))
        }
        guard let tree = result.parse_tree,
            let json = try? JSONSerialization.jsonObject(with: Data(String(cString: tree).utf8)) as? [String: Any]
        else { throw QueryParseError(message: "the parser returned no tree", cursorPosition: 0) }
        var walker = Walker()
        for entry in json["stmts"] as? [[String: Any]] ?? [] {
            guard let statement = entry["stmt"] as? [String: Any], let (type, node) = statement.first else { continue }
            walker.analysis.kinds.append(walker.kind(of: type, node as? [String: Any] ?? [:]))
            walker.analysis.statementTypes.append(type)
            walker.visit(statement, writeTarget: false)
        }
        walker.analysis.relationsRead.subtract(walker.cteNames)
        return walker.analysis
    }

    /// PostgreSQL's query fingerprint (constants and formatting ignored), as hex; nil if it does not parse.
    public static func fingerprint(_ sql: String) -> String? {
        let result = pg_query_fingerprint(sql)
        defer { pg_query_free_fingerprint_result(result) }
        guard result.error == nil, let text = result.fingerprint_str else { return nil }
        return String(cString: text)
    }

    /// The query with constants replaced by $n; nil if it does not parse.
    public static func normalize(_ sql: String) -> String? {
        let result = pg_query_normalize(sql)
        defer { pg_query_free_normalize_result(result) }
        guard result.error == nil, let text = result.normalized_query else { return nil }
        return String(cString: text)
    }

    struct Walker {
        var analysis = QueryAnalysis()
        var cteNames: Set<String> = []

        static let writeStatements: Set<String> = ["InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"]

        func kind(of type: String, _ node: [String: Any]) -> StatementKind {
            switch type {
            case "SelectStmt": return node["intoClause"] == nil ? .read : .write
            case "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt": return .write
            case "TransactionStmt": return .transaction
            case "VariableSetStmt": return .set
            case "VariableShowStmt": return .show
            case "CopyStmt": return (node["is_from"] as? Bool) == true ? .copyIn : .copyOut
            case "ExplainStmt":
                // EXPLAIN ANALYZE runs the statement.
                let options = node["options"] as? [[String: Any]] ?? []
                let analyze = options.contains { (($0["DefElem"] as? [String: Any])?["defname"] as? String) == "analyze" }
                if analyze, let query = node["query"] as? [String: Any], let (inner, innerNode) = query.first {
                    return self.kind(of: inner, innerNode as? [String: Any] ?? [:])
                }
                return .read
            case "TruncateStmt", "GrantStmt", "GrantRoleStmt", "CommentStmt", "RenameStmt", "IndexStmt", "ViewStmt",
                "RuleStmt", "ClusterStmt", "ReindexStmt", "RefreshMatViewStmt", "CreateTableAsStmt":
                return .ddl
            default:
                if type.hasPrefix("Create") || type.hasPrefix("Alter") || type.hasPrefix("Drop") { return .ddl }
                return .utility
            }
        }

        mutating func visit(_ value: Any, writeTarget: Bool) {
            if let array = value as? [Any] {
                for element in array { self.visit(element, writeTarget: false) }
                return
            }
            guard let object = value as? [String: Any] else { return }
            for (key, child) in object {
                switch key {
                case "RangeVar":
                    if let node = child as? [String: Any], let name = node["relname"] as? String {
                        let qualified = (node["schemaname"] as? String).map { "\($0).\(name)" } ?? name
                        if writeTarget {
                            self.analysis.relationsWritten.insert(qualified)
                        } else {
                            self.analysis.relationsRead.insert(qualified)
                        }
                    }
                case "FuncCall":
                    if let node = child as? [String: Any] {
                        let parts = (node["funcname"] as? [[String: Any]] ?? []).compactMap {
                            ($0["String"] as? [String: Any])?["sval"] as? String
                        }
                        // pg_catalog is implied for built-ins.
                        let name = parts.first == "pg_catalog" ? parts.dropFirst().joined(separator: ".") : parts.joined(separator: ".")
                        if !name.isEmpty { self.analysis.functions.insert(name.lowercased()) }
                        self.visit(node, writeTarget: false)
                    }
                case "CommonTableExpr":
                    if let node = child as? [String: Any] {
                        if let name = node["ctename"] as? String { self.cteNames.insert(name) }
                        if let query = node["ctequery"] as? [String: Any], let inner = query.keys.first,
                            Self.writeStatements.contains(inner)
                        {
                            self.analysis.hasDataModifyingCTE = true
                        }
                        self.visit(node, writeTarget: false)
                    }
                case "lockingClause":
                    if let clauses = child as? [Any], !clauses.isEmpty { self.analysis.hasLockingClause = true }
                case "TransactionStmt":
                    if let node = child as? [String: Any] {
                        for option in node["options"] as? [[String: Any]] ?? [] {
                            guard let element = option["DefElem"] as? [String: Any],
                                element["defname"] as? String == "transaction_read_only"
                            else { continue }
                            let value = ((element["arg"] as? [String: Any])?["A_Const"] as? [String: Any])?["ival"]
                            let number = (value as? [String: Any])?["ival"] as? Int ?? 0
                            self.analysis.transactionReadOnly = number != 0
                        }
                    }
                default:
                    if Self.writeStatements.contains(key) || key == "CopyStmt" || key == "TruncateStmt", let node = child as? [String: Any] {
                        // The target relation of a write is written; everything else in it is read.
                        for (field, value) in node {
                            if field == "relation" || (key == "TruncateStmt" && field == "relations") {
                                let isWrite = key != "CopyStmt" || (node["is_from"] as? Bool) == true
                                if let relations = value as? [Any] {
                                    for relation in relations { self.visit(relation, writeTarget: isWrite) }
                                } else {
                                    self.visit(["RangeVar": value], writeTarget: isWrite)
                                }
                            } else {
                                self.visit(value, writeTarget: false)
                            }
                        }
                    } else {
                        self.visit(child, writeTarget: false)
                    }
                }
            }
        }
    }
}
