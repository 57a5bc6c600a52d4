/// What a statement does to session state that a transaction-pooling proxy must carry from one server
/// connection to the next, or that cannot follow the client at all (and so pins it to its server).
public enum SessionEffect: Sendable, Equatable {
    /// Nothing that outlives the transaction.
    case none
    /// A session-level setting: replayed on the next server connection. `name` is normalized.
    case set(name: String, statement: String)
    case reset(name: String)
    case resetAll
    /// DISCARD ALL: the session is back to its defaults.
    case discardAll
    /// DEALLOCATE name, or DEALLOCATE ALL (nil): prepared statements go away.
    case deallocate(name: String?)
    /// State that cannot follow the client to another server connection.
    case pin(reason: String)
}

/// A lexical classifier for session effects. It splits a query string into statements (respecting
/// quotes, dollar quotes and comments) and looks at the leading keywords of each. It never fails:
/// text it does not understand has no session effect beyond what the pin rules catch.
public enum SessionEffectClassifier {
    /// The effects of each statement in `sql`, in order; statements without an effect are omitted
    /// unless `keepNone` is set, in which case the result has one entry per non-empty statement.
    public static func effects(of sql: String, keepNone: Bool = false) -> [SessionEffect] {
        var result: [SessionEffect] = []
        for statement in SQLLexer.statements(in: sql) {
            let effect = self.classify(statement)
            if keepNone || effect != .none { result.append(effect) }
        }
        return result
    }

    public static func classify(_ statement: SQLLexer.Statement) -> SessionEffect {
        let words = statement.leadingWords
        guard let first = words.first else { return .none }
        let second = words.count > 1 ? words[1] : ""
        let third = words.count > 2 ? words[2] : ""
        if statement.mentionsAdvisoryLock { return .pin(reason: "advisory lock") }
        if statement.mentionsSetConfig { return .pin(reason: "set_config") }
        switch first {
        case "set":
            switch second {
            case "local", "transaction", "constraints": return .none
            case "session":
                switch third {
                case "authorization": return .set(name: "session_authorization", statement: statement.text)
                case "characteristics": return .set(name: "session_characteristics", statement: statement.text)
                case "": return .none
                default: return .set(name: third, statement: statement.text)
                }
            case "time": return .set(name: "timezone", statement: statement.text)
            case "": return .none
            default: return .set(name: second, statement: statement.text)
            }
        case "reset":
            switch second {
            case "all": return .resetAll
            case "session": return .reset(name: third == "authorization" ? "session_authorization" : third)
            case "time": return .reset(name: "timezone")
            case "": return .none
            default: return .reset(name: second)
            }
        case "discard":
            return second == "all" ? .discardAll : .none
        case "deallocate":
            // DEALLOCATE [PREPARE] { name | ALL }
            let target = second == "prepare" ? third : second
            if target.isEmpty { return .none }
            return .deallocate(name: target == "all" ? nil : statement.leadingNames.dropFirst(second == "prepare" ? 2 : 1).first)
        case "listen": return .pin(reason: "LISTEN")
        case "prepare": return .pin(reason: "PREPARE")
        case "load": return .pin(reason: "LOAD")
        case "declare":
            return statement.hasWithHold ? .pin(reason: "WITH HOLD cursor") : .none
        case "create":
            if words.dropFirst().prefix(3).contains(where: { $0 == "temp" || $0 == "temporary" }) {
                return .pin(reason: "temporary table")
            }
            return .none
        default:
            return .none
        }
    }
}
