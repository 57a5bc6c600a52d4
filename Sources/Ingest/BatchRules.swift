import Cache
import Foundation
import NIOCore

/// A validation rule of a batched relation (`relations.<name>.batch.rules.<rule>`): checked on every row
/// before it is batched. A row that breaks one is rejected with SQLSTATE 23514, naming the rule.
public struct BatchRule: Sendable, Equatable {
    public enum Check: Sendable, Equatable {
        case greaterThan(Double)
        case greaterOrEqual(Double)
        case lessThan(Double)
        case lessOrEqual(Double)
        /// The instant may lie at most this far ahead of the clock.
        case maxFutureMs(Int64)
        /// … or at most this far behind it.
        case maxPastMs(Int64)
        case notNull
    }

    public var name: String
    public var column: String
    public var check: Check

    public init(name: String, column: String, check: Check) {
        self.name = name
        self.column = column
        self.check = check
    }

    /// Whether the rule needs an instant (as opposed to a number).
    public var isTimeRule: Bool {
        switch self.check {
        case .maxFutureMs, .maxPastMs: return true
        case .greaterThan, .greaterOrEqual, .lessThan, .lessOrEqual, .notNull: return false
        }
    }

    /// What the rule asks, for messages: `price > 0`.
    public var text: String {
        switch self.check {
        case .greaterThan(let bound): return "\(self.column) > \(Self.format(bound))"
        case .greaterOrEqual(let bound): return "\(self.column) >= \(Self.format(bound))"
        case .lessThan(let bound): return "\(self.column) < \(Self.format(bound))"
        case .lessOrEqual(let bound): return "\(self.column) <= \(Self.format(bound))"
        case .maxFutureMs(let ms): return "\(self.column) at most \(ms) ms ahead of now"
        case .maxPastMs(let ms): return "\(self.column) at most \(ms) ms behind now"
        case .notNull: return "\(self.column) IS NOT NULL"
        }
    }

    static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }

    /// Checks one value. `nil` means NULL: like a CHECK constraint, only `not_null` rejects it.
    public func accepts(_ value: RuleValue?, nowMicros: Int64) -> Bool {
        switch (self.check, value) {
        case (.notNull, let value): return value != nil
        case (_, nil): return true
        // NaN sorts above every number, as PostgreSQL compares numeric and float values.
        case (.greaterThan(let bound), .number(let x)?): return x.isNaN || x > bound
        case (.greaterOrEqual(let bound), .number(let x)?): return x.isNaN || x >= bound
        case (.lessThan(let bound), .number(let x)?): return !x.isNaN && x < bound
        case (.lessOrEqual(let bound), .number(let x)?): return !x.isNaN && x <= bound
        case (.maxFutureMs(let ms), .instant(let t)?): return t <= nowMicros + ms * 1_000
        case (.maxPastMs(let ms), .instant(let t)?): return t >= nowMicros - ms * 1_000
        case (.greaterThan, .instant?), (.greaterOrEqual, .instant?), (.lessThan, .instant?), (.lessOrEqual, .instant?),
            (.maxFutureMs, .number?), (.maxPastMs, .number?):
            return false
        }
    }
}

/// A value a rule compares: a number or an instant (microseconds since the Unix epoch).
public enum RuleValue: Sendable, Equatable {
    case number(Double)
    case instant(Int64)
}

/// Reads rule values from what a client sent: text numbers and timestamps, and the binary forms of the
/// integer, float, numeric and timestamp types. nil: Tidegate cannot read the value (the statement is then
/// not batched, so a rule is never skipped).
public enum RuleValueReader {
    public static let int2: UInt32 = 21
    public static let int4: UInt32 = 23
    public static let int8: UInt32 = 20
    public static let float4: UInt32 = 700
    public static let float8: UInt32 = 701
    public static let numeric: UInt32 = 1700
    public static let timestamp: UInt32 = 1114
    public static let timestamptz: UInt32 = 1184

    /// A number from a value of type `oid`.
    public static func number(_ value: ByteBuffer, oid: UInt32, binary: Bool) -> Double? {
        if !binary {
            let text = String(buffer: value).trimmingCharacters(in: " ")
            if text.lowercased() == "nan" { return .nan }
            return Double(text)
        }
        var value = value
        switch oid {
        case int2: return value.readInteger(as: Int16.self).map(Double.init)
        case int4: return value.readInteger(as: Int32.self).map(Double.init)
        case int8: return value.readInteger(as: Int64.self).map(Double.init)
        case float4: return value.readInteger(as: UInt32.self).map { Double(Float(bitPattern: $0)) }
        case float8: return value.readInteger(as: UInt64.self).map { Double(bitPattern: $0) }
        case numeric: return Self.binaryNumeric(&value)
        default: return nil
        }
    }

    /// An instant from a value of type `oid`. Text without a zone is local time in the session's `zone`
    /// (as PostgreSQL reads it for timestamptz); nil when the zone is unknown to this system.
    public static func instant(_ value: ByteBuffer, oid: UInt32, binary: Bool, zone: TimeZone?) -> Int64? {
        if !binary {
            guard let (micros, hasZone) = TimestampText.micros(utf8: value.readableBytesView) else { return nil }
            if hasZone || oid == timestamp { return micros }
            guard let zone else { return nil }
            return Self.fromLocal(micros, zone: zone)
        }
        guard oid == timestamp || oid == timestamptz, value.readableBytes == 8,
            let micros = value.getInteger(at: value.readerIndex, as: Int64.self)
        else { return nil }
        if micros == .max || micros == .min { return micros }
        return micros + TimestampText.postgresEpochMicros
    }

    /// The instant of a local wall-clock time in `zone` (the offset in force at that instant).
    static func fromLocal(_ local: Int64, zone: TimeZone) -> Int64? {
        guard local != .max, local != .min else { return local }
        let guess = Date(timeIntervalSince1970: Double(local) / 1_000_000)
        let first = Int64(zone.secondsFromGMT(for: guess)) * 1_000_000
        let instant = Date(timeIntervalSince1970: Double(local - first) / 1_000_000)
        return local - Int64(zone.secondsFromGMT(for: instant)) * 1_000_000
    }

    /// `to_timestamp(seconds)`: the instant of a number of seconds since the Unix epoch.
    public static func instant(seconds: Double) -> Int64? {
        guard seconds.isFinite, abs(seconds) < 9e12 else { return nil }
        return Int64((seconds * 1_000_000).rounded())
    }

    /// PostgreSQL's binary numeric: ndigits, weight, sign, dscale, then base-10000 digits.
    static func binaryNumeric(_ value: inout ByteBuffer) -> Double? {
        guard let count = value.readInteger(as: Int16.self), let weight = value.readInteger(as: Int16.self),
            let sign = value.readInteger(as: UInt16.self), value.readInteger(as: Int16.self) != nil, count >= 0
        else { return nil }
        if sign == 0xC000 { return .nan }
        if sign == 0xD000 { return .infinity }
        if sign == 0xF000 { return -.infinity }
        var result = 0.0
        for index in 0..<Int(count) {
            guard let digit = value.readInteger(as: Int16.self) else { return nil }
            result += Double(digit) * pow10000(Int(weight) - index)
        }
        return sign == 0x4000 ? -result : result
    }

    static func pow10000(_ exponent: Int) -> Double {
        var result = 1.0
        if exponent >= 0 {
            for _ in 0..<exponent { result *= 10_000 }
        } else {
            for _ in 0..<(-exponent) { result /= 10_000 }
        }
        return result
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        var slice = Substring(self)
        while slice.first == set { slice.removeFirst() }
        while slice.last == set { slice.removeLast() }
        return String(slice)
    }
}
