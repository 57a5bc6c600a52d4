/// Instants from timestamp text as PostgreSQL prints it with DateStyle ISO and as clients write
/// literals: `2026-11-30`, `2026-11-30 14:31[:05[.123456]]`, a `T` separator, and a zone `Z`, `+HH`,
/// `-HH:MM`, `+HH:MM:SS`; `infinity` and `-infinity`. Years 1–9999.
public enum TimestampText {
    /// Microseconds since the Unix epoch, and whether the text named its zone. Without a zone the
    /// instant is read as UTC (the caller widens it by the largest zone offsets when the session's
    /// TimeZone is not UTC).
    public static func micros(_ text: some StringProtocol) -> (micros: Int64, hasZone: Bool)? {
        let bytes = Array(text.utf8)
        var trimmed = bytes[...]
        while let first = trimmed.first, first == 0x20 { trimmed = trimmed.dropFirst() }
        while let last = trimmed.last, last == 0x20 { trimmed = trimmed.dropLast() }
        let lower = String(decoding: trimmed, as: UTF8.self).lowercased()
        if lower == "infinity" || lower == "+infinity" { return (Int64.max, true) }
        if lower == "-infinity" { return (Int64.min, true) }
        var scanner = Scanner(bytes: Array(trimmed))
        guard let year = scanner.digits(4), scanner.take(0x2D), let month = scanner.digits(2), scanner.take(0x2D),
            let day = scanner.digits(2), (1...9999).contains(year), (1...12).contains(month),
            (1...Self.daysIn(month: month, year: year)).contains(day)
        else { return nil }
        var seconds = Self.daysFromCivil(year: year, month: month, day: day) * 86_400
        var fraction: Int64 = 0
        var hasZone = false
        if scanner.take(0x20) || scanner.take(0x54) || scanner.take(0x74) {
            guard let hour = scanner.digits(2), hour <= 24, scanner.take(0x3A), let minute = scanner.digits(2), minute < 60
            else { return nil }
            var second: Int64 = 0
            if scanner.take(0x3A) {
                guard let value = scanner.digits(2), value <= 60 else { return nil }
                second = value
                if scanner.take(0x2E) {
                    var digits = 0
                    while let digit = scanner.digit() {
                        if digits < 6 { fraction = fraction * 10 + digit }
                        digits += 1
                    }
                    guard digits > 0 else { return nil }
                    for _ in min(digits, 6)..<6 { fraction *= 10 }
                    // PostgreSQL rounds to microseconds; a seventh digit ≥ 5 is not worth the detail here:
                    // bounds are widened by the caller by at least a microsecond anyway.
                }
            }
            seconds += hour * 3_600 + minute * 60 + second
            _ = scanner.take(0x20)
            if scanner.take(0x5A) || scanner.take(0x7A) {
                hasZone = true
            } else if let sign = scanner.peek(), sign == 0x2B || sign == 0x2D {
                _ = scanner.take(sign)
                guard let zoneHour = scanner.digits(2), zoneHour <= 15 else { return nil }
                var offset = zoneHour * 3_600
                if scanner.take(0x3A) {
                    guard let zoneMinute = scanner.digits(2), zoneMinute < 60 else { return nil }
                    offset += zoneMinute * 60
                    if scanner.take(0x3A) {
                        guard let zoneSecond = scanner.digits(2), zoneSecond < 60 else { return nil }
                        offset += zoneSecond
                    }
                } else if let zoneMinute = scanner.digits(2), zoneMinute < 60 {
                    offset += zoneMinute * 60
                }
                seconds -= sign == 0x2B ? offset : -offset
                hasZone = true
            }
        }
        guard scanner.atEnd else { return nil }
        return (seconds * 1_000_000 + fraction, hasZone)
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    struct Scanner {
        let bytes: [UInt8]
        var index = 0

        var atEnd: Bool { self.index == self.bytes.count }
        func peek() -> UInt8? { self.index < self.bytes.count ? self.bytes[self.index] : nil }

        mutating func take(_ byte: UInt8) -> Bool {
            guard self.peek() == byte else { return false }
            self.index += 1
            return true
        }

        mutating func digit() -> Int64? {
            guard let byte = self.peek(), (0x30...0x39).contains(byte) else { return nil }
            self.index += 1
            return Int64(byte - 0x30)
        }

        mutating func digits(_ count: Int) -> Int64? {
            var value: Int64 = 0
            for _ in 0..<count {
                guard let digit = self.digit() else { return nil }
                value = value * 10 + digit
            }
            return value
        }
    }
}
