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

    /// Keywords that start a statement with a session effect.
    static let effectKeywords: Set<String> = [
        "set", "reset", "discard", "deallocate", "listen", "prepare", "load", "declare", "create",
    ]

    /// A cheap look at raw query bytes: the lower-cased first word when the text is one statement whose
    /// first word has no session effect and that mentions neither advisory locks nor set_config, or nil
    /// when the text needs the full lexer. Most queries take this path.
    public static func quickFirstWord(_ bytes: UnsafeRawBufferPointer) -> String? {
        var index = 0
        let count = bytes.count
        // Leading white space and simple comments.
        while index < count {
            let byte = bytes[index]
            if byte == 32 || byte == 9 || byte == 10 || byte == 13 {
                index += 1
            } else if byte == UInt8(ascii: "-") || byte == UInt8(ascii: "/") {
                return nil
            } else {
                break
            }
        }
        var word: [UInt8] = []
        while index < count, word.count < 16 {
            var byte = bytes[index]
            if byte >= 65 && byte <= 90 { byte += 32 }
            guard byte >= 97 && byte <= 122 else { break }
            word.append(byte)
            index += 1
        }
        guard !word.isEmpty, word.count < 16 else { return nil }
        let first = String(decoding: word, as: UTF8.self)
        if self.effectKeywords.contains(first) { return nil }
        // One statement only (a trailing semicolon and white space are fine), with no quotes or
        // dollar signs that could hide one, and no mention of advisory locks or set_config.
        var sawSemicolon = false
        var previous: UInt8 = 0
        while index < count {
            var byte = bytes[index]
            if sawSemicolon && !(byte == 32 || byte == 9 || byte == 10 || byte == 13) { return nil }
            switch byte {
            case UInt8(ascii: ";"): sawSemicolon = true
            case UInt8(ascii: "'"), UInt8(ascii: "\""), UInt8(ascii: "$"), UInt8(ascii: "-"), UInt8(ascii: "/"):
                return nil
            default:
                if byte >= 65 && byte <= 90 { byte += 32 }
                // "advisory" and "set_config" both contain these pairs: a cheap filter.
                if (previous == UInt8(ascii: "a") && byte == UInt8(ascii: "d")) || (previous == UInt8(ascii: "t") && byte == UInt8(ascii: "_")) {
                    return nil
                }
            }
            previous = byte
            index += 1
        }
        return first
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
