/// The session-level settings a client has made (SET, RESET, startup parameters), in order, so they
/// can be replayed on whichever server connection the client gets next.
public struct SessionSettings: Sendable, Equatable {
    public private(set) var entries: [(name: String, statement: String)] = [] {
        didSet { self.statements = self.entries.map(\.statement) }
    }

    /// The statements to run, in order, to recreate these settings after RESET ALL. Kept up to date
    /// on every change, so reading it (on every server checkout) allocates nothing.
    public private(set) var statements: [String] = []

    public init() {}

    public static func == (lhs: SessionSettings, rhs: SessionSettings) -> Bool {
        lhs.entries.elementsEqual(rhs.entries, by: { $0.name == $1.name && $0.statement == $1.statement })
    }


    public var isEmpty: Bool { self.entries.isEmpty }

    /// The statement that last set `name`, if any.
    public func statement(for name: String) -> String? {
        self.entries.last(where: { $0.name == name.lowercased() })?.statement
    }

    public mutating func apply(_ effect: SessionEffect) {
        switch effect {
        case .set(let name, let statement):
            let name = name.lowercased()
            self.entries.removeAll { $0.name == name }
            self.entries.append((name, statement))
        case .reset(let name):
            let name = name.lowercased()
            self.entries.removeAll { $0.name == name }
        case .resetAll, .discardAll:
            self.entries.removeAll()
        case .none, .pin, .deallocate:
            break
        }
    }

    /// The statement that applies a startup parameter. `set_config` takes the value as one raw string,
    /// exactly as PostgreSQL applies a startup parameter (so `search_path=a,b` stays a list).
    public static func setStatement(name: String, value: String) -> String {
        "SELECT pg_catalog.set_config('\(name.doubling("'"))', '\(value.doubling("'"))', false)"
    }

    /// Parses the `options` startup parameter: `-c name=value`, `--name=value`, with backslash escapes.
    public static func parseOptions(_ options: String) -> [(String, String)]? {
        var tokens: [String] = []
        var current = ""
        var escaping = false
        var inToken = false
        for character in options {
            if escaping {
                current.append(character)
                escaping = false
                inToken = true
            } else if character == "\\" {
                escaping = true
            } else if character.isWhitespace {
                if inToken {
                    tokens.append(current)
                    current = ""
                    inToken = false
                }
            } else {
                current.append(character)
                inToken = true
            }
        }
        if inToken { tokens.append(current) }
        var result: [(String, String)] = []
        var index = 0
        while index < tokens.count {
            var setting: String
            if tokens[index] == "-c" {
                guard index + 1 < tokens.count else { return nil }
                setting = tokens[index + 1]
                index += 2
            } else if tokens[index].hasPrefix("-c") {
                setting = String(tokens[index].dropFirst(2))
                index += 1
            } else if tokens[index].hasPrefix("--") {
                setting = String(tokens[index].dropFirst(2))
                index += 1
            } else {
                return nil
            }
            guard let equals = setting.firstIndex(of: "=") else { return nil }
            let name = String(setting[..<equals].map { $0 == "-" ? "_" : $0 })
            setting = String(setting[setting.index(after: equals)...])
            result.append((name, setting))
        }
        return result
    }
}

extension String {
    /// Doubles every occurrence of `quote` (SQL quoting).
    func doubling(_ quote: Character) -> String {
        var result = ""
        result.reserveCapacity(self.count + 2)
        for character in self {
            result.append(character)
            if character == quote { result.append(quote) }
        }
        return result
    }
}
