/// A small SQL lexer: enough to split a query string into statements and read their leading keywords,
/// following PostgreSQL's rules for quotes ('…', E'…', "…"), dollar quotes ($tag$…$tag$) and comments
/// (-- and nested /* */). It works on UTF-8 bytes and never fails.
public enum SQLLexer {
    public struct Statement: Sendable, Equatable {
        /// The statement text, trimmed, without the terminating semicolon.
        public var text: String
        /// The first few words (identifiers and keywords), lower-cased, outside quotes and comments.
        public var leadingWords: [String]
        /// The same words as written (quoted identifiers keep their case), for names.
        public var leadingNames: [String] = []
        /// True when the words `with hold` appear outside quotes.
        public var hasWithHold: Bool
        public var mentionsAdvisoryLock: Bool
        public var mentionsSetConfig: Bool
    }

    static let maxLeadingWords = 4

    public static func statements(in sql: String) -> [Statement] {
        var result: [Statement] = []
        let bytes = Array(sql.utf8)
        var index = 0
        var start = 0
        var words: [String] = []
        var names: [String] = []
        var previousWord = ""
        var withHold = false
        var advisory = false
        var setConfig = false
        var sawToken = false

        func finish(_ end: Int) {
            if sawToken {
                let text = String(decoding: bytes[start..<end], as: UTF8.self)
                result.append(
                    Statement(
                        text: text.trimmingWhitespace(), leadingWords: words, leadingNames: names,
                        hasWithHold: withHold, mentionsAdvisoryLock: advisory, mentionsSetConfig: setConfig))
            }
            words = []
            names = []
            previousWord = ""
            withHold = false
            advisory = false
            setConfig = false
            sawToken = false
        }

        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: ";"):
                finish(index)
                index += 1
                start = index
            case UInt8(ascii: "-") where index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: "-"):
                while index < bytes.count && bytes[index] != UInt8(ascii: "\n") { index += 1 }
            case UInt8(ascii: "/") where index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: "*"):
                var depth = 1
                index += 2
                while index < bytes.count && depth > 0 {
                    if bytes[index] == UInt8(ascii: "/") && index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: "*") {
                        depth += 1
                        index += 2
                    } else if bytes[index] == UInt8(ascii: "*") && index + 1 < bytes.count
                        && bytes[index + 1] == UInt8(ascii: "/")
                    {
                        depth -= 1
                        index += 2
                    } else {
                        index += 1
                    }
                }
            case UInt8(ascii: "'"):
                sawToken = true
                // E'…' only when the E is a token of its own, not the end of a word such as LIKE.
                let escapes =
                    index > 0 && (bytes[index - 1] == UInt8(ascii: "E") || bytes[index - 1] == UInt8(ascii: "e"))
                    && (index < 2 || !self.isIdentifierPart(bytes[index - 2]))
                index = self.skipQuoted(bytes, from: index, quote: UInt8(ascii: "'"), backslashEscapes: escapes)
                previousWord = ""
            case UInt8(ascii: "\""):
                // A quoted identifier is a word (case kept, but settings are case-insensitive anyway).
                sawToken = true
                let (word, end) = self.readName(bytes, from: index)
                index = end
                if words.count < self.maxLeadingWords {
                    words.append(word.lowercased())
                    names.append(word)
                }
                previousWord = word.lowercased()
            case UInt8(ascii: "$"):
                sawToken = true
                if let end = self.skipDollarQuoted(bytes, from: index) {
                    index = end
                } else {
                    index += 1
                }
                previousWord = ""
            default:
                if self.isIdentifierStart(byte) {
                    sawToken = true
                    let (name, end) = self.readName(bytes, from: index)
                    index = end
                    let word = name.lowercased()
                    if words.count < self.maxLeadingWords {
                        words.append(word)
                        // Unquoted names fold to lower case, as PostgreSQL folds them.
                        names.append(word)
                    }
                    if previousWord == "with" && word == "hold" { withHold = true }
                    if word.hasPrefix("pg_advisory_lock") || word.hasPrefix("pg_try_advisory_lock") { advisory = true }
                    if word == "set_config" { setConfig = true }
                    previousWord = word
                } else {
                    if byte > 32 { sawToken = true }
                    index += 1
                }
            }
        }
        finish(bytes.count)
        return result
    }

    /// Reads an identifier or quoted identifier, with any `.`-qualified parts (`app.tenant_id`,
    /// `"My".setting`), and returns it with the index after it.
    static func readName(_ bytes: [UInt8], from start: Int) -> (String, Int) {
        var name = ""
        var index = start
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "\"") {
                var part: [UInt8] = []
                index += 1
                while index < bytes.count {
                    if bytes[index] == UInt8(ascii: "\"") {
                        if index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: "\"") {
                            part.append(UInt8(ascii: "\""))
                            index += 2
                            continue
                        }
                        index += 1
                        break
                    }
                    part.append(bytes[index])
                    index += 1
                }
                name += String(decoding: part, as: UTF8.self)
            } else if self.isIdentifierStart(bytes[index]) {
                let partStart = index
                while index < bytes.count && self.isIdentifierPart(bytes[index]) { index += 1 }
                name += String(decoding: bytes[partStart..<index], as: UTF8.self)
            } else {
                break
            }
            // A qualified name goes on after a dot followed by another part.
            guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "."),
                self.isIdentifierStart(bytes[index + 1]) || bytes[index + 1] == UInt8(ascii: "\"")
            else { break }
            name += "."
            index += 1
        }
        return (name, index)
    }

    static func isIdentifierStart(_ byte: UInt8) -> Bool {
        (byte >= 97 && byte <= 122) || (byte >= 65 && byte <= 90) || byte == 95 || byte >= 128
    }

    static func isIdentifierPart(_ byte: UInt8) -> Bool {
        self.isIdentifierStart(byte) || (byte >= 48 && byte <= 57) || byte == 36
    }

    static func skipQuoted(_ bytes: [UInt8], from: Int, quote: UInt8, backslashEscapes: Bool) -> Int {
        var index = from + 1
        while index < bytes.count {
            if backslashEscapes && bytes[index] == UInt8(ascii: "\\") {
                index += 2
                continue
            }
            if bytes[index] == quote {
                if index + 1 < bytes.count && bytes[index + 1] == quote {
                    index += 2
                    continue
                }
                return index + 1
            }
            index += 1
        }
        return bytes.count
    }

    /// Returns the index after the closing tag, or nil when `$` does not open a dollar quote.
    static func skipDollarQuoted(_ bytes: [UInt8], from: Int) -> Int? {
        var index = from + 1
        while index < bytes.count && bytes[index] != UInt8(ascii: "$") {
            guard self.isIdentifierPart(bytes[index]) && bytes[index] != UInt8(ascii: "$") else { return nil }
            if index == from + 1 && bytes[index] >= 48 && bytes[index] <= 57 { return nil }  // $1 parameter
            index += 1
        }
        guard index < bytes.count else { return nil }
        let tag = Array(bytes[from...index])
        index += 1
        while index + tag.count <= bytes.count {
            if bytes[index] == UInt8(ascii: "$") && Array(bytes[index..<(index + tag.count)]) == tag {
                return index + tag.count
            }
            index += 1
        }
        return bytes.count
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var view = Substring(self)
        while let first = view.first, first.isWhitespace { view.removeFirst() }
        while let last = view.last, last.isWhitespace { view.removeLast() }
        return String(view)
    }
}
