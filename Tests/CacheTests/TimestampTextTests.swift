import Testing

@testable import Cache

@Suite struct TimestampTextTests {
    @Test(
        arguments: [
            ("1970-01-01", 0, false),
            ("1970-01-01 00:00:00+00", 0, true),
            ("1969-12-31 23:59:59.999999", -1, false),
            ("2024-01-02 03:04:05.123456+00", 1_704_164_645_123_456, true),
            ("2024-01-02T03:04:05.123456Z", 1_704_164_645_123_456, true),
            ("2024-01-02t03:04:05.123456z", 1_704_164_645_123_456, true),
            ("2024-01-02 03:04:05.123456", 1_704_164_645_123_456, false),
            ("2024-01-02 03:04", 1_704_164_640_000_000, false),
            ("2024-01-02 03:04:05.5-05:30", 1_704_184_445_500_000, true),
            ("2024-01-02 03:04:05.5 -05:30", 1_704_184_445_500_000, true),
            ("2024-01-02 08:34:05.5+00:00", 1_704_184_445_500_000, true),
            ("2024-02-29 00:00:00+05:30:15", 1_709_144_985_000_000, true),
            ("2024-01-02 03:04:05+01", 1_704_161_045_000_000, true),
            ("  2024-01-02  ", 1_704_153_600_000_000, false),
            ("0001-01-01 00:00:00", -62_135_596_800_000_000, false),
            ("9999-12-31 23:59:59.999999", 253_402_300_799_999_999, false),
            ("2000-01-01 24:00:00", 946_771_200_000_000, false),
            ("2016-12-31 23:59:60+00", 1_483_228_800_000_000, true),
            ("2024-01-02 03:04:05.1", 1_704_164_645_100_000, false),
        ] as [(String, Int64, Bool)])
    func parses(_ text: String, _ micros: Int64, _ hasZone: Bool) {
        let parsed = TimestampText.micros(text)
        #expect(parsed?.micros == micros, "\(text)")
        #expect(parsed?.hasZone == hasZone, "\(text)")
    }

    @Test func infinities() {
        #expect(TimestampText.micros("infinity")?.micros == Int64.max)
        #expect(TimestampText.micros("+infinity")?.micros == Int64.max)
        #expect(TimestampText.micros(" Infinity ")?.micros == Int64.max)
        #expect(TimestampText.micros("-infinity")?.micros == Int64.min)
        #expect(TimestampText.micros("-INFINITY")?.micros == Int64.min)
        #expect(TimestampText.micros("infinityx") == nil)
        #expect(TimestampText.micros("infinit") == nil)
    }

    @Test(arguments: [
        "", " ", "yesterday", "now", "2023-02-29", "2024-13-01", "2024-00-10", "2024-01-32", "2024-04-31", "24-01-01",
        "2024-1-01", "0000-01-01", "10000-01-01", "2024-01-01 25:00", "2024-01-01 24:00:01", "2024-01-01 03:60",
        "2024-01-01 03:04:61", "2024-01-01 03:04:05.1234567", "2024-01-01 03:04:05.", "2024-01-01 03:04:05+16",
        "2024-01-01 03:04:05+", "2024-01-01 03:04:05+1", "2024-01-01 03:04:05+01:60", "2024-01-01 3:04",
        "2024-01-01X03:04", "2024-01-01 03:04:05 BC", "0044-03-15 00:00:00+00 BC", "2024-01-01 03:04:05 UTC",
        "2024-01-01 03:04:05+01:00 x", "2024-01-01T", "１９７０-01-01",
    ])
    func rejects(_ text: String) {
        #expect(TimestampText.micros(text) == nil, "\(text)")
    }

    /// Random instants printed as PostgreSQL prints them (ISO, with an offset) read back to the same
    /// instant; the expected value comes from counting days one year and month at a time.
    @Test func randomInstantsRoundTrip() {
        var generator = SplitMix64(seed: 7)
        for _ in 0..<3_000 {
            let year = Int(generator.next() % 9_999) + 1
            let month = Int(generator.next() % 12) + 1
            let day = Int(generator.next() % UInt64(TimestampText.daysIn(month: month, year: year))) + 1
            let (hour, minute, second) = (
                Int(generator.next() % 24), Int(generator.next() % 60), Int(generator.next() % 60)
            )
            let fraction = Int(generator.next() % 1_000_000)
            let offsetMinutes = Int(generator.next() % 1_681) - 840
            var days = 0
            for y in 1970..<max(1970, year) { days += TimestampText.isLeap(y) ? 366 : 365 }
            for y in min(1970, year)..<1970 { days -= TimestampText.isLeap(y) ? 366 : 365 }
            for m in 1..<month { days += TimestampText.daysIn(month: m, year: year) }
            days += day - 1
            let local =
                (Int64(days) * 86_400 + Int64(hour * 3_600 + minute * 60 + second)) * 1_000_000 + Int64(fraction)
            let expected = local - Int64(offsetMinutes) * 60_000_000
            func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
            let yearText = String(repeating: "0", count: 4 - String(year).count) + String(year)
            let fractionText = String(repeating: "0", count: 6 - String(fraction).count) + String(fraction)
            let sign = offsetMinutes < 0 ? "-" : "+"
            let zone =
                "\(sign)\(two(abs(offsetMinutes) / 60))"
                + (abs(offsetMinutes) % 60 == 0 ? "" : ":\(two(abs(offsetMinutes) % 60))")
            let text =
                "\(yearText)-\(two(month))-\(two(day)) \(two(hour)):\(two(minute)):\(two(second))"
                + ".\(fractionText)\(zone)"
            let parsed = TimestampText.micros(text)
            #expect(parsed?.micros == expected, "\(text)")
            if parsed?.micros != expected { return }
        }
    }
}
