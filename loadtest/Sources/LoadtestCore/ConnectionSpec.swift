import Foundation

/// A libpq connection string (`host=… port=… user=… password=… dbname=…`) or URI
/// (`postgresql://user:password@host:port/dbname`), with libpq's environment defaults.
public struct ConnectionSpec: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String
    public var sslmode: String?
    public var applicationName: String?

    public init(host: String, port: Int, user: String, password: String?, database: String, sslmode: String? = nil, applicationName: String? = nil) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.sslmode = sslmode
        self.applicationName = applicationName
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// The keywords a connection string may hold (anything else is an error, not silently ignored).
    public static let keywords: Set<String> = [
        "host", "hostaddr", "port", "user", "password", "dbname", "sslmode", "application_name", "connect_timeout",
    ]

    /// The text with every password in it (`password=…` of a keyword string, quoted or not, and
    /// the one of a URI) replaced by "…": what a report may show of a command line.
    public static func redacted(_ text: String) -> String {
        text.replacingOccurrences(of: #"password\s*=\s*('([^'\\]|\\.)*'?|[^\s]*)"#, with: "password=…", options: .regularExpression)
            .replacingOccurrences(of: #"://([^:/@\s]*):[^@\s]*@"#, with: "://$1:…@", options: .regularExpression)
    }

    public static func parse(_ text: String, environment: [String: String] = [:]) throws(ParseError) -> ConnectionSpec {
        var values: [String: String] = [:]
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("postgresql://") || trimmed.hasPrefix("postgres://") {
            values = try Self.parseURI(trimmed)
        } else if !trimmed.isEmpty {
            values = try Self.parseKeywords(trimmed)
        }
        let host = values["host"] ?? values["hostaddr"] ?? environment["PGHOST"] ?? "127.0.0.1"
        let portText = values["port"] ?? environment["PGPORT"] ?? "5432"
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw ParseError("port \"\(portText)\" is not a port number")
        }
        let user = values["user"] ?? environment["PGUSER"] ?? environment["USER"] ?? "postgres"
        return ConnectionSpec(
            host: host, port: port, user: user, password: values["password"] ?? environment["PGPASSWORD"],
            database: values["dbname"] ?? environment["PGDATABASE"] ?? user, sslmode: values["sslmode"] ?? environment["PGSSLMODE"],
            applicationName: values["application_name"])
    }

    /// `key=value` pairs separated by spaces; values may be single-quoted with `\'` and `\\` escapes.
    static func parseKeywords(_ text: String) throws(ParseError) -> [String: String] {
        var values: [String: String] = [:]
        var characters = Array(text)[...]
        func skipSpaces() { while let first = characters.first, first == " " || first == "\t" { characters.removeFirst() } }
        skipSpaces()
        while !characters.isEmpty {
            var key = ""
            while let first = characters.first, first != "=", first != " " {
                key.append(first)
                characters.removeFirst()
            }
            skipSpaces()
            guard characters.first == "=" else { throw ParseError("\"\(key)\" has no value (expected key=value)") }
            characters.removeFirst()
            skipSpaces()
            var value = ""
            if characters.first == "'" {
                characters.removeFirst()
                var closed = false
                while let first = characters.popFirst() {
                    if first == "\\", let next = characters.popFirst() {
                        value.append(next)
                    } else if first == "'" {
                        closed = true
                        break
                    } else {
                        value.append(first)
                    }
                }
                guard closed else { throw ParseError("unterminated quoted value of \"\(key)\"") }
            } else {
                while let first = characters.first, first != " " {
                    value.append(first)
                    characters.removeFirst()
                }
            }
            guard Self.keywords.contains(key) else {
                throw ParseError("unknown connection keyword \"\(key)\" (known: \(Self.keywords.sorted().joined(separator: ", ")))")
            }
            values[key] = value
            skipSpaces()
        }
        return values
    }

    static func parseURI(_ text: String) throws(ParseError) -> [String: String] {
        var rest = Substring(text)
        rest = rest.drop(while: { $0 != ":" }).dropFirst(3)  // "://"
        var values: [String: String] = [:]
        var query = Substring("")
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        var path = Substring("")
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                values["user"] = Self.percentDecoded(credentials[..<colon])
                values["password"] = Self.percentDecoded(credentials[credentials.index(after: colon)...])
            } else if !credentials.isEmpty {
                values["user"] = Self.percentDecoded(credentials)
            }
        }
        if let colon = rest.lastIndex(of: ":") {
            values["port"] = String(rest[rest.index(after: colon)...])
            rest = rest[..<colon]
        }
        if !rest.isEmpty { values["host"] = Self.percentDecoded(rest) }
        if !path.isEmpty { values["dbname"] = Self.percentDecoded(path) }
        for pair in query.split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1)
            let key = String(parts[0])
            guard Self.keywords.contains(key) else { throw ParseError("unknown connection parameter \"\(key)\" in the URI") }
            values[key] = parts.count > 1 ? Self.percentDecoded(parts[1]) : ""
        }
        return values
    }

    static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(text.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "%"), utf8.count >= 2,
                let value = UInt8(String(decoding: utf8.prefix(2), as: UTF8.self), radix: 16)
            {
                bytes.append(value)
                utf8.removeFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// host:port/database as user (for reports: never the password).
    public var endpoint: String { "\(self.host):\(self.port)/\(self.database) as \(self.user)" }
}

/// `NAME=DSN` (a named target) or a bare DSN (named `target1`, `target2`… by position).
public struct TargetArgument: Sendable, Equatable {
    public var name: String
    public var dsn: String

    public init(name: String, dsn: String) {
        self.name = name
        self.dsn = dsn
    }

    public static func parse(_ text: String, position: Int) throws(ConnectionSpec.ParseError) -> TargetArgument {
        if let equals = text.firstIndex(of: "=") {
            let name = String(text[..<equals])
            let isName = !name.isEmpty && !ConnectionSpec.keywords.contains(name)
                && name.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }
            if isName {
                let dsn = String(text[text.index(after: equals)...])
                guard !dsn.isEmpty else { throw ConnectionSpec.ParseError("target \"\(name)\" has an empty connection string") }
                return TargetArgument(name: name, dsn: dsn)
            }
        }
        return TargetArgument(name: "target\(position)", dsn: text)
    }
}

