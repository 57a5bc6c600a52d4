/// A per-statement routing hint in a leading comment:
/// `/* tidegate: route=primary */`, `route=replica`, `region=eu-west`, `max_lag=500ms` (several may be
/// combined, separated by spaces or commas). The cache reads `max_staleness=2s` and `cache=off` from
/// the same comment.
public struct RoutingHint: Sendable, Equatable {
    public enum Route: String, Sendable { case primary, replica }

    public var route: Route?
    public var region: String?
    public var maxLagSeconds: Double?
    /// Accept a cached result filled less than this long ago even if a write since moved its versions.
    public var maxStalenessSeconds: Double?
    /// `cache=off` (false) or `cache=on` (true).
    public var cache: Bool?

    public init(route: Route? = nil, region: String? = nil, maxLagSeconds: Double? = nil) {
        self.route = route
        self.region = region
        self.maxLagSeconds = maxLagSeconds
    }

    /// The hint of a query text: only a `/* tidegate: ... */` comment before the first token counts.
    /// Unknown keys and malformed values are ignored (the statement is routed as if they were absent).
    public static func parse(_ sql: String) -> RoutingHint? {
        var text = Substring(sql)
        while let first = text.first, first.isWhitespace { text = text.dropFirst() }
        guard text.hasPrefix("/*"), let end = text.range(of: "*/") else { return nil }
        var body = text[text.index(text.startIndex, offsetBy: 2)..<end.lowerBound]
        while let first = body.first, first.isWhitespace { body = body.dropFirst() }
        guard body.lowercased().hasPrefix("tidegate:") else { return nil }
        body = body.dropFirst("tidegate:".count)
        var hint = RoutingHint()
        for item in body.split(whereSeparator: { $0 == "," || $0.isWhitespace }) {
            let parts = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else { continue }
            switch parts[0].lowercased() {
            case "route": hint.route = Route(rawValue: parts[1].lowercased())
            case "region": hint.region = parts[1].isEmpty ? nil : parts[1]
            case "max_lag": hint.maxLagSeconds = Self.duration(parts[1])
            case "max_staleness": hint.maxStalenessSeconds = Self.duration(parts[1])
            case "cache":
                switch parts[1].lowercased() {
                case "off", "false", "no": hint.cache = false
                case "on", "true", "yes": hint.cache = true
                default: continue
                }
            default: continue
            }
        }
        return hint
    }

    /// `500ms`, `2s`, `1.5s`, `1min`, or a bare number of milliseconds.
    static func duration(_ text: String) -> Double? {
        let lower = text.lowercased()
        for (suffix, scale) in [("ms", 0.001), ("min", 60.0), ("s", 1.0)] where lower.hasSuffix(suffix) {
            return Double(lower.dropLast(suffix.count)).flatMap { $0 >= 0 ? $0 * scale : nil }
        }
        return Double(lower).flatMap { $0 >= 0 ? $0 / 1000 : nil }
    }
}

/// What routing needs to know of a query text, computed once per text (the caller memoizes it).
public struct RouteProfile: Sendable, Equatable {
    /// Only reads (and SET/SHOW): may run on a replica if every function called is known not to write.
    public var readCandidate: Bool
    /// Starts a transaction declared READ ONLY (and does nothing that writes).
    public var beginsReadOnlyTransaction: Bool
    /// Functions called (lower case, qualified as written).
    public var functions: [String]
    public var hint: RoutingHint?
    /// The parser rejected the text; it goes to the primary, which reports the error.
    public var parseError: Bool
    /// Only transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT…): writes nothing by itself.
    public var transactionControl = false

    public init(readCandidate: Bool, beginsReadOnlyTransaction: Bool = false, functions: [String] = [], hint: RoutingHint? = nil, parseError: Bool = false) {
        self.readCandidate = readCandidate
        self.beginsReadOnlyTransaction = beginsReadOnlyTransaction
        self.functions = functions
        self.hint = hint
        self.parseError = parseError
    }

    /// A statement that must run on the primary.
    public static let primaryOnly = RouteProfile(readCandidate: false)

    public init(sql: String) {
        let hint = RoutingHint.parse(sql)
        guard let analysis = try? QueryAnalyzer.analyze(sql) else {
            self.init(readCandidate: false, hint: hint, parseError: true)
            return
        }
        let clean = !analysis.hasDataModifyingCTE && !analysis.hasLockingClause && analysis.relationsWritten.isEmpty
        let readKinds: Set<StatementKind> = [.read, .show, .set]
        let readOnlyTransaction =
            analysis.transactionReadOnly == true && clean
            && analysis.kinds.allSatisfy { readKinds.contains($0) || $0 == .transaction }
        self.init(
            readCandidate: clean && !analysis.kinds.isEmpty && analysis.kinds.allSatisfy { readKinds.contains($0) },
            beginsReadOnlyTransaction: readOnlyTransaction, functions: analysis.functions.sorted(), hint: hint)
        self.transactionControl = !analysis.kinds.isEmpty && analysis.kinds.allSatisfy { $0 == .transaction }
    }

    /// Whether the statement may run on a replica, given which functions are known not to write.
    public func isReadOnly(isSafeFunction: (String) -> Bool) -> Bool {
        (self.readCandidate || self.beginsReadOnlyTransaction) && self.functions.allSatisfy(isSafeFunction)
    }
}

/// Which functions are known not to write: from pg_proc's volatility (immutable and stable functions
/// cannot write), plus volatile functions on an allow-list.
public struct FunctionCatalog: Sendable {
    /// Volatile functions that only read (or only consume randomness / the clock).
    public static let builtInSafe: Set<String> = [
        "random", "random_normal", "setseed", "clock_timestamp", "timeofday", "gen_random_uuid", "uuid_generate_v4",
        "pg_sleep", "pg_sleep_for", "pg_sleep_until", "pg_backend_pid", "pg_stat_get_activity",
    ]

    /// Names (unqualified and schema-qualified) of functions that are volatile in at least one overload.
    private var volatileNames: Set<String> = []
    /// Names (unqualified and schema-qualified) of every function.
    private var knownNames: Set<String> = []
    /// Names that are stable (and not volatile) in at least one overload.
    private var stableNames: Set<String> = []
    /// Names of built-in functions (schema pg_catalog).
    private var builtInNames: Set<String> = []
    private let allowList: Set<String>

    public init(allowList: some Sequence<String>) {
        self.allowList = Set(allowList.map { $0.lowercased() }).union(Self.builtInSafe)
    }

    /// Adds one pg_proc row: schema, name, provolatile ('i', 's' or 'v').
    public mutating func add(schema: String, name: String, volatility: String) {
        let names = [name.lowercased(), "\(schema.lowercased()).\(name.lowercased())"]
        for name in names {
            self.knownNames.insert(name)
            if volatility == "v" { self.volatileNames.insert(name) }
            if volatility == "s" { self.stableNames.insert(name) }
            if schema == "pg_catalog" { self.builtInNames.insert(name) }
        }
    }

    public var count: Int { self.knownNames.count }

    /// Whether the database has a function of this name (unqualified or `schema.name`).
    public func knows(_ function: String) -> Bool { self.knownNames.contains(function.lowercased()) }

    /// Known, and either never volatile or allowed. A function the catalog does not know (created after it
    /// was loaded, or misspelt) is not safe.
    public func isSafe(_ function: String) -> Bool {
        let unqualified = function.split(separator: ".").last.map(String.init) ?? function
        if self.allowList.contains(function) || self.allowList.contains(unqualified) { return true }
        return self.knownNames.contains(function) && !self.volatileNames.contains(function)
    }

    /// Stable built-ins whose result moves with the clock, the session or the catalog rather than only
    /// with the settings a cache key holds.
    public static let cacheUnsafeStable: Set<String> = [
        "now", "statement_timestamp", "transaction_timestamp", "current_setting", "age", "current_query",
        "to_regclass", "to_regproc", "to_regtype", "to_regnamespace", "to_regrole", "to_regoper", "current_schemas",
    ]

    /// Whether a cached result of a query calling the function stays right until the relations it reads
    /// change: immutable functions, stable built-ins that depend only on settings in the key (TimeZone,
    /// DateStyle…), and the functions in `allowed`. Never a volatile one.
    public func isCacheSafe(_ function: String, allowed: Set<String>) -> Bool {
        let unqualified = function.split(separator: ".").last.map(String.init) ?? function
        if allowed.contains(function) || allowed.contains(unqualified) { return true }
        guard self.knownNames.contains(function), !self.volatileNames.contains(function) else { return false }
        guard self.stableNames.contains(function) else { return true }
        if unqualified.hasPrefix("pg_") || unqualified.hasPrefix("has_") || unqualified.hasPrefix("txid_")
            || unqualified.hasPrefix("inet_") || Self.cacheUnsafeStable.contains(unqualified)
        {
            return false
        }
        return self.builtInNames.contains(unqualified)
    }
}

extension RouteProfile {
    /// The key under which a query text's profile is memoized: the text with its literal values masked
    /// (single-quoted strings become `''`, numbers at the start of a token become `0`), so the statement
    /// `... WHERE id = 42` and `... WHERE id = 43` share one parse. Literal values cannot change a
    /// routing profile; everything else (keywords, identifiers, quoted identifiers, comments, hints) is
    /// kept byte for byte. Returns nil when the text holds something the masking does not handle
    /// unambiguously (a backslash in a string, dollar quoting): then the whole text is the key.
    public static func memoKey(_ sql: some Collection<UInt8>) -> [UInt8]? {
        var key: [UInt8] = []
        key.reserveCapacity(sql.count)
        var iterator = Array(sql)[...]
        var previous: UInt8 = 0x20
        func isIdentifier(_ byte: UInt8) -> Bool {
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || byte == 0x5F
                || byte >= 0x80
        }
        while let byte = iterator.first {
            switch byte {
            case UInt8(ascii: "'"):
                // A string: '' inside doubles a quote. A backslash may be an escape (E'' or
                // standard_conforming_strings off): do not guess.
                iterator = iterator.dropFirst()
                var closed = false
                while let inner = iterator.first {
                    iterator = iterator.dropFirst()
                    if inner == UInt8(ascii: "\\") { return nil }
                    if inner == UInt8(ascii: "'") {
                        if iterator.first == UInt8(ascii: "'") {
                            iterator = iterator.dropFirst()
                            continue
                        }
                        closed = true
                        break
                    }
                }
                guard closed else { return nil }
                key.append(contentsOf: [UInt8(ascii: "'"), UInt8(ascii: "'")])
                previous = UInt8(ascii: "'")
            case UInt8(ascii: "\""):
                // A quoted identifier: kept.
                key.append(byte)
                iterator = iterator.dropFirst()
                var closed = false
                while let inner = iterator.first {
                    key.append(inner)
                    iterator = iterator.dropFirst()
                    if inner == UInt8(ascii: "\"") {
                        if iterator.first == UInt8(ascii: "\"") {
                            key.append(inner)
                            iterator = iterator.dropFirst()
                            continue
                        }
                        closed = true
                        break
                    }
                }
                guard closed else { return nil }
                previous = byte
            case UInt8(ascii: "$"):
                // $1 is a parameter; $tag$ or $$ starts a dollar-quoted string.
                let next = iterator.dropFirst().first
                guard let next, next >= 0x30 && next <= 0x39, !isIdentifier(previous) else { return nil }
                key.append(byte)
                iterator = iterator.dropFirst()
                while let digit = iterator.first, digit >= 0x30 && digit <= 0x39 {
                    key.append(digit)
                    iterator = iterator.dropFirst()
                }
                previous = UInt8(ascii: "0")
            case UInt8(ascii: "-") where iterator.dropFirst().first == UInt8(ascii: "-"):
                // A line comment: kept.
                while let inner = iterator.first, inner != 0x0A {
                    key.append(inner)
                    iterator = iterator.dropFirst()
                }
            case UInt8(ascii: "/") where iterator.dropFirst().first == UInt8(ascii: "*"):
                // A block comment (they nest): kept.
                var depth = 0
                repeat {
                    if iterator.starts(with: [UInt8(ascii: "/"), UInt8(ascii: "*")]) {
                        depth += 1
                        key.append(contentsOf: iterator.prefix(2))
                        iterator = iterator.dropFirst(2)
                    } else if iterator.starts(with: [UInt8(ascii: "*"), UInt8(ascii: "/")]) {
                        depth -= 1
                        key.append(contentsOf: iterator.prefix(2))
                        iterator = iterator.dropFirst(2)
                    } else if let inner = iterator.first {
                        key.append(inner)
                        iterator = iterator.dropFirst()
                    } else {
                        return nil
                    }
                } while depth > 0
                previous = 0x20
            case UInt8(ascii: "0")...UInt8(ascii: "9") where !isIdentifier(previous):
                // A number: digits, a decimal point, an exponent.
                while let digit = iterator.first,
                    (digit >= 0x30 && digit <= 0x39) || digit == UInt8(ascii: ".") || digit == UInt8(ascii: "_")
                {
                    iterator = iterator.dropFirst()
                }
                if let e = iterator.first, e == UInt8(ascii: "e") || e == UInt8(ascii: "E") {
                    var rest = iterator.dropFirst()
                    if let sign = rest.first, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") { rest = rest.dropFirst() }
                    if let digit = rest.first, digit >= 0x30 && digit <= 0x39 {
                        iterator = rest
                        while let digit = iterator.first, digit >= 0x30 && digit <= 0x39 { iterator = iterator.dropFirst() }
                    }
                }
                key.append(UInt8(ascii: "0"))
                previous = UInt8(ascii: "0")
            default:
                key.append(byte)
                iterator = iterator.dropFirst()
                previous = byte
            }
        }
        return key
    }
}
