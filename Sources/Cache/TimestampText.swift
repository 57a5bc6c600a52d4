/// Instants from timestamp text: what PostgreSQL prints with `DateStyle = ISO` (the replication listener
/// asks for it) and the ISO-like literals clients write. Anything else gives nil, which callers treat as
/// "any time": a wrong instant would leave a stale cache entry, an unknown one only costs a wider
/// invalidation.
public enum TimestampText {
    /// Microseconds between 1970-01-01 and 2000-01-01, PostgreSQL's own epoch.
    public static let postgresEpochMicros: Int64 = 946_684_800_000_000

    /// Parses `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS[.ffffff]]` (or `T` between date and time) with an
    /// optional zone `Z`, `±HH`, `±HH:MM` or `±HH:MM:SS`; and `infinity`, `-infinity`. Years 1–9999.
    /// Returns microseconds since the Unix epoch and whether a zone was given; without one the text is
    /// read as UTC (a `timestamp without time zone` value, or a timestamptz printed with TimeZone=UTC
    /// always carries `+00`). Infinities are Int64.max and Int64.min, with `hasZone` true: they are the
    /// same instant in every zone.
    public static func micros(_ text: some StringProtocol) -> (micros: Int64, hasZone: Bool)? {
        self.micros(utf8: text.utf8)
    }

    /// The same from UTF-8 bytes (a value as it arrived in a message).
    public static func micros(utf8 text: some Sequence<UInt8>) -> (micros: Int64, hasZone: Bool)? {
        var scanner = Scanner(Array(text))
        scanner.skipSpaces()
        if let infinity = scanner.infinity() {
            scanner.skipSpaces()
            return scanner.atEnd ? (infinity, true) : nil
        }
        guard let year = scanner.digits(exactly: 4), scanner.take(UInt8(ascii: "-")),
            let month = scanner.digits(exactly: 2), scanner.take(UInt8(ascii: "-")),
            let day = scanner.digits(exactly: 2),
            (1...9999).contains(year), (1...12).contains(month), (1...daysIn(month: month, year: year)).contains(day)
        else { return nil }
        var micros = Int64(daysFromCivil(year: year, month: month, day: day)) * 86_400_000_000
        scanner.skipSpaces()
        if scanner.atEnd { return (micros, false) }
        if scanner.peek == UInt8(ascii: "T") || scanner.peek == UInt8(ascii: "t") { scanner.advance() }
        guard let time = scanner.timeOfDay() else { return nil }
        micros += time
        scanner.skipSpaces()
        if scanner.atEnd { return (micros, false) }
        guard let offset = scanner.zoneOffset() else { return nil }
        scanner.skipSpaces()
        guard scanner.atEnd else { return nil }
        // Local time is UTC plus the offset.
        return (micros - offset, true)
    }

    static func isLeap(_ year: Int) -> Bool { year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// A cursor over ASCII bytes.
    struct Scanner {
        let bytes: [UInt8]
        var index = 0

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        var atEnd: Bool { self.index == self.bytes.count }
        var peek: UInt8? { self.atEnd ? nil : self.bytes[self.index] }

        mutating func advance() { self.index += 1 }

        mutating func take(_ byte: UInt8) -> Bool {
            guard self.peek == byte else { return false }
            self.index += 1
            return true
        }

        mutating func skipSpaces() {
            while self.peek == UInt8(ascii: " ") { self.index += 1 }
        }

        mutating func digits(exactly count: Int) -> Int? {
            guard self.bytes.count - self.index >= count else { return nil }
            var value = 0
            for offset in 0..<count {
                let byte = self.bytes[self.index + offset]
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            self.index += count
            return value
        }

        /// `infinity`, `+infinity` or `-infinity`, in any case.
        mutating func infinity() -> Int64? {
            let start = self.index
            let negative = self.take(UInt8(ascii: "-"))
            if !negative { _ = self.take(UInt8(ascii: "+")) }
            let word = Array("infinity".utf8)
            guard self.bytes.count - self.index >= word.count,
                zip(self.bytes[self.index..<self.index + word.count], word).allSatisfy({ $0 | 0x20 == $1 })
            else {
                self.index = start
                return nil
            }
            self.index += word.count
            return negative ? Int64.min : Int64.max
        }

        /// `HH:MM[:SS[.f…]]` as microseconds since midnight. 24:00:00 is the next midnight and second 60
        /// rolls over into the next minute, as PostgreSQL reads them; more than six fractional digits
        /// would need rounding that could cross a bucket boundary, so they are refused.
        mutating func timeOfDay() -> Int64? {
            guard let hour = self.digits(exactly: 2), self.take(UInt8(ascii: ":")),
                let minute = self.digits(exactly: 2), hour <= 24, minute <= 59
            else { return nil }
            var second = 0
            var fraction: Int64 = 0
            if self.take(UInt8(ascii: ":")) {
                guard let parsed = self.digits(exactly: 2), parsed <= 60 else { return nil }
                second = parsed
                if self.take(UInt8(ascii: ".")) {
                    var count = 0
                    while let byte = self.peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) {
                        guard count < 6 else { return nil }
                        fraction = fraction * 10 + Int64(byte - UInt8(ascii: "0"))
                        count += 1
                        self.advance()
                    }
                    guard count > 0 else { return nil }
                    for _ in count..<6 { fraction *= 10 }
                }
            }
            if hour == 24 && (minute != 0 || second != 0 || fraction != 0) { return nil }
            return (Int64(hour) * 3_600 + Int64(minute) * 60 + Int64(second)) * 1_000_000 + fraction
        }

        /// `Z`, `±HH`, `±HH:MM` or `±HH:MM:SS` as microseconds east of UTC.
        mutating func zoneOffset() -> Int64? {
            if self.take(UInt8(ascii: "Z")) || self.take(UInt8(ascii: "z")) { return 0 }
            let sign: Int64
            if self.take(UInt8(ascii: "+")) {
                sign = 1
            } else if self.take(UInt8(ascii: "-")) {
                sign = -1
            } else {
                return nil
            }
            // PostgreSQL accepts offsets up to 15:59:59.
            guard let hours = self.digits(exactly: 2), hours <= 15 else { return nil }
            var seconds = hours * 3_600
            if self.take(UInt8(ascii: ":")) {
                guard let minutes = self.digits(exactly: 2), minutes <= 59 else { return nil }
                seconds += minutes * 60
                if self.take(UInt8(ascii: ":")) {
                    guard let extra = self.digits(exactly: 2), extra <= 59 else { return nil }
                    seconds += extra
                }
            }
            return sign * Int64(seconds) * 1_000_000
        }
    }
}
