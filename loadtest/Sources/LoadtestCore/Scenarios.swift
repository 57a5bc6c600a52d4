import Foundation

/// One statement a scenario sends, with `$n` parameters (sent as text, types left to the server, as
/// pgbench and libpq's PQexecParams do).
public struct StatementKind: Sendable, Equatable {
    public var name: String
    public var sql: String
    public var weight: Double

    public init(name: String, sql: String, weight: Double) {
        self.name = name
        self.sql = sql
        self.weight = weight
    }

    /// The statement with its parameters as quoted literals, for the simple protocol. Unknown-typed
    /// literals are typed by the server as the parameters would be.
    public func literalSQL(_ parameters: [String?]) -> String {
        var result = ""
        var characters = self.sql[...]
        while let character = characters.popFirst() {
            guard character == "$", let first = characters.first, first.isNumber else {
                result.append(character)
                continue
            }
            let digits = characters.prefix(while: \.isNumber)
            characters = characters.dropFirst(digits.count)
            let index = (Int(digits) ?? 0) - 1
            if index >= 0, index < parameters.count, let value = parameters[index] {
                result += "'" + value.replacingOccurrences(of: "'", with: "''") + "'"
            } else {
                result += "NULL"
            }
        }
        return result
    }
}

/// What a statement of a scenario needs: its kind (index into the workload's kinds) and text values.
public struct NextStatement: Sendable, Equatable {
    public var kind: Int
    public var parameters: [String?]

    public init(kind: Int, parameters: [String?]) {
        self.kind = kind
        self.parameters = parameters
    }
}

/// A trading day of the data: its date and the first and last tick (Unix seconds).
public struct TradingDay: Sendable, Equatable, Codable {
    public var date: String
    public var first: Int64
    public var last: Int64

    public init(date: String, first: Int64, last: Int64) {
        self.date = date
        self.first = first
        self.last = last
    }
}

/// The data a market-data scenario draws from, read from the first target before the runs.
public struct MarketContext: Sendable, Equatable, Codable {
    /// Most active first (the Zipf rank of a symbol is its position here).
    public var symbols: [String]
    /// Oldest first.
    public var days: [TradingDay]

    public init(symbols: [String], days: [TradingDay]) {
        self.symbols = symbols
        self.days = days
    }
}

public enum ScenarioName: String, CaseIterable, Sendable, Codable {
    case passthrough
    case apiReads = "api-reads"
    case ingest
    case mixed

    public var description: String {
        switch self {
        case .passthrough:
            return "Point queries: `SELECT abalance FROM pgbench_accounts WHERE aid = $1` with a uniform aid (pgbench's select-only script), one statement per transaction."
        case .apiReads:
            return "What a market-data API reads: latest price, last N ticks, 1-minute bars over an hour, 5-minute bars over a day, hourly bars over a week, daily bars over a year (`bars_1d`), top movers over an hour; symbols Zipf-distributed by activity (s = 1.1), ranges Zipf-distributed by recency (the most recent day and hour most often); one statement per transaction."
        case .ingest:
            return "Single-row autocommit tick INSERTs into `ticks` (ts = the wall clock, a Zipf-distributed symbol, unique trade_id) from many writers, closed-loop or at a target rate."
        case .mixed:
            return "The api-reads mix from the reading clients while writers insert ticks at the write rate (classes `reads` and `writes`)."
        }
    }

    /// The tables it reads or writes, checked on every target before the runs.
    public var requiredTables: [String] {
        switch self {
        case .passthrough: return ["pgbench_accounts"]
        case .apiReads: return ["ticks", "bars_1d", "instruments"]
        case .ingest: return ["ticks"]
        case .mixed: return ["ticks", "bars_1d", "instruments"]
        }
    }

    /// What to run when the tables are missing.
    public var preparation: String {
        switch self {
        case .passthrough:
            return "tidegate-loadtest prepare --scenario passthrough --target DSN (pgbench -i)"
        case .apiReads, .ingest, .mixed:
            return "tidegate migrate, then tidegate-loadtest prepare --scenario \(self.rawValue) --target DSN (loadtest/gen-market-data)"
        }
    }
}

/// A stream of statements for one client.
public protocol Workload: Sendable {
    var kinds: [StatementKind] { get }
    mutating func next() -> NextStatement
}

/// pgbench's select-only transaction, for the native engine.
public struct PassthroughWorkload: Workload {
    public let kinds = [StatementKind(name: "point", sql: "SELECT abalance FROM pgbench_accounts WHERE aid = $1", weight: 1)]
    private var generator: SeededGenerator
    private let accounts: Int

    /// `scale`: pgbench's scale factor (100,000 accounts each).
    public init(scale: Int, seed: UInt64, client: Int) {
        self.generator = SeededGenerator(seed: seed, stream: UInt64(client))
        self.accounts = max(1, scale) * 100_000
    }

    public mutating func next() -> NextStatement {
        NextStatement(kind: 0, parameters: [String(Int(self.generator.next() % UInt64(self.accounts)) + 1)])
    }
}

/// The api-reads mix.
public struct APIReadsWorkload: Workload {
    static let ohlcv = "first(price, ts) AS open, max(price) AS high, min(price) AS low, last(price, ts) AS close, sum(size) AS volume"
    public let kinds: [StatementKind] = [
        StatementKind(name: "latest_price", sql: "SELECT ts, price, size FROM ticks WHERE symbol = $1 ORDER BY ts DESC LIMIT 1", weight: 25),
        StatementKind(
            name: "last_ticks", sql: "SELECT ts, price, size, exchange FROM ticks WHERE symbol = $1 ORDER BY ts DESC LIMIT $2", weight: 15),
        StatementKind(
            name: "bars_1m_hour",
            sql: "SELECT time_bucket('1 minute', ts) AS bucket, \(ohlcv) FROM ticks WHERE symbol = $1 AND ts >= $2 AND ts < $3 GROUP BY 1 ORDER BY 1",
            weight: 20),
        StatementKind(
            name: "bars_5m_day",
            sql: "SELECT time_bucket('5 minutes', ts) AS bucket, \(ohlcv) FROM ticks WHERE symbol = $1 AND ts >= $2 AND ts < $3 GROUP BY 1 ORDER BY 1",
            weight: 15),
        StatementKind(
            name: "bars_1h_week",
            sql: "SELECT time_bucket('1 hour', ts) AS bucket, \(ohlcv) FROM ticks WHERE symbol = $1 AND ts >= $2 AND ts < $3 GROUP BY 1 ORDER BY 1",
            weight: 10),
        StatementKind(
            name: "bars_1d_year",
            sql: "SELECT bucket, open, high, low, close, volume FROM bars_1d WHERE symbol = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket",
            weight: 10),
        StatementKind(
            name: "top_movers",
            sql: "SELECT symbol, first(price, ts) AS open, last(price, ts) AS close, last(price, ts) / first(price, ts) - 1 AS change, sum(size) AS volume FROM ticks WHERE ts >= $1 AND ts < $2 GROUP BY symbol ORDER BY change DESC, symbol LIMIT 10",
            weight: 5),
    ]
    private let context: MarketContext
    private var generator: SeededGenerator
    private let choice: WeightedChoice
    private let symbolRank: ZipfDistribution
    private let dayRank: ZipfDistribution
    static let exponent = 1.1

    public init(context: MarketContext, seed: UInt64, client: Int) {
        precondition(!context.symbols.isEmpty && !context.days.isEmpty, "api-reads needs symbols and trading days")
        self.context = context
        self.generator = SeededGenerator(seed: seed, stream: UInt64(client))
        self.choice = WeightedChoice(weights: self.kinds.map(\.weight))
        self.symbolRank = ZipfDistribution(count: context.symbols.count, exponent: Self.exponent)
        self.dayRank = ZipfDistribution(count: context.days.count, exponent: Self.exponent)
    }

    public mutating func next() -> NextStatement {
        let kind = self.choice.sample(using: &self.generator)
        let symbol = self.context.symbols[self.symbolRank.sample(using: &self.generator)]
        let dayIndex = self.context.days.count - 1 - self.dayRank.sample(using: &self.generator)
        let day = self.context.days[dayIndex]
        let midnight = Self.midnight(day.date) ?? (day.first - day.first % 86_400)
        switch self.kinds[kind].name {
        case "latest_price":
            return NextStatement(kind: kind, parameters: [symbol])
        case "last_ticks":
            let limits = [20, 50, 100]
            return NextStatement(kind: kind, parameters: [symbol, String(limits[Int(self.generator.next() % 3)])])
        case "bars_1m_hour", "top_movers":
            // Whole hours of the day's trading, the last one most often.
            let lastHour = day.last - day.last % 3600
            let firstHour = day.first - day.first % 3600
            let hours = Int((lastHour - firstHour) / 3600) + 1
            let back = ZipfDistribution(count: max(1, hours), exponent: Self.exponent).sample(using: &self.generator)
            let start = lastHour - Int64(back) * 3600
            let range = [Self.timestamp(start), Self.timestamp(start + 3600)]
            return NextStatement(kind: kind, parameters: self.kinds[kind].name == "top_movers" ? range : [symbol] + range)
        case "bars_5m_day":
            return NextStatement(kind: kind, parameters: [symbol, Self.timestamp(midnight), Self.timestamp(midnight + 86_400)])
        case "bars_1h_week":
            let startDay = self.context.days[max(0, dayIndex - 4)]
            let start = Self.midnight(startDay.date) ?? (startDay.first - startDay.first % 86_400)
            return NextStatement(kind: kind, parameters: [symbol, Self.timestamp(start), Self.timestamp(midnight + 86_400)])
        default:  // bars_1d_year
            return NextStatement(kind: kind, parameters: [symbol, Self.timestamp(midnight + 86_400 - 365 * 86_400), Self.timestamp(midnight + 86_400)])
        }
    }

    /// Unix seconds of 00:00 UTC of `YYYY-MM-DD`.
    public static func midnight(_ date: String) -> Int64? {
        let parts = date.split(separator: "-").compactMap { Int($0) }
        guard parts.count == 3 else { return nil }
        return Int64(Self.daysFromCivil(year: parts[0], month: parts[1], day: parts[2])) * 86_400
    }

    /// `YYYY-MM-DD HH:MM:SS+00` of Unix seconds.
    public static func timestamp(_ seconds: Int64) -> String {
        let days = Int(seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400)
        let rest = Int(seconds - Int64(days) * 86_400)
        let (year, month, day) = Self.civilFromDays(days)
        return String(format: "%04d-%02d-%02d %02d:%02d:%02d+00", year, month, day, rest / 3600, rest / 60 % 60, rest % 60)
    }

    /// Microsecond precision: `YYYY-MM-DD HH:MM:SS.ffffff+00`.
    public static func timestamp(microseconds: Int64) -> String {
        let seconds = microseconds >= 0 ? microseconds / 1_000_000 : (microseconds - 999_999) / 1_000_000
        let fraction = microseconds - seconds * 1_000_000
        var text = Self.timestamp(seconds)
        text.removeLast(3)
        return text + String(format: ".%06d+00", Int(fraction))
    }

    // Howard Hinnant's civil-date algorithms (proleptic Gregorian).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civilFromDays(_ days: Int) -> (Int, Int, Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}

/// Single-row tick INSERTs stamped with the wall clock.
public struct IngestWorkload: Workload {
    public let kinds = [
        StatementKind(
            name: "insert_tick",
            sql: "INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id) VALUES ($1, $2, $3, $4, $5, $6)", weight: 1)
    ]
    static let exchanges = ["XNAS", "XNYS", "ARCX", "BATS", "XADF"]
    private var generator: SeededGenerator
    private let symbols: [String]
    private let symbolRank: ZipfDistribution
    private let clock: @Sendable () -> Int64
    private let tradeBase: Int64
    private var counter: Int64 = 0

    /// `runID`: distinct per run (e.g. its start in seconds), so trade ids never repeat across runs;
    /// `clock`: Unix microseconds.
    public init(symbols: [String], seed: UInt64, client: Int, runID: Int64, clock: @escaping @Sendable () -> Int64) {
        precondition(!symbols.isEmpty, "ingest needs symbols")
        self.generator = SeededGenerator(seed: seed, stream: UInt64(client) | 1 << 40)
        self.symbols = symbols
        self.symbolRank = ZipfDistribution(count: symbols.count, exponent: 1.1)
        self.clock = clock
        // Unique across clients (10^9 statements each) and runs: runID × 10^13 + client × 10^9 + n.
        self.tradeBase = (runID % 900_000) * 10_000_000_000_000 + Int64(client) * 1_000_000_000
    }

    public mutating func next() -> NextStatement {
        self.counter += 1
        let symbol = self.symbols[self.symbolRank.sample(using: &self.generator)]
        let cents = 1_000 + Int(self.generator.next() % 49_000)
        let size = 100 * (1 + Int(self.generator.next() % 10))
        let exchange = Self.exchanges[Int(self.generator.next() % UInt64(Self.exchanges.count))]
        return NextStatement(
            kind: 0,
            parameters: [
                APIReadsWorkload.timestamp(microseconds: self.clock()), symbol, String(format: "%d.%02d", cents / 100, cents % 100),
                String(size), exchange, String(self.tradeBase + self.counter),
            ])
    }
}
