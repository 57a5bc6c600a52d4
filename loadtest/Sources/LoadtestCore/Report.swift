import Histogram

/// Everything one `tidegate-loadtest run` measured: the JSON report is this value, the Markdown and SVG
/// reports are drawn from it.
public struct Report: Codable, Sendable, Equatable {
    public var tool: String
    public var scenario: String
    /// What the scenario sends, in a sentence or two.
    public var scenarioDescription: String
    /// The command line that produced the report.
    public var command: String
    /// ISO 8601, UTC.
    public var started: String
    public var machine: MachineInfo
    /// The options in force (clients, duration, rounds, seed, rate, mode, engine…), by name.
    public var options: [String: String]
    /// In the order given: the first is the baseline of every ratio.
    public var targets: [TargetInfo]
    /// In the order run (interleaved: round 1 of every target, then round 2…).
    public var runs: [RunResult]
    /// Per (target, class), in target order.
    public var summary: [ClassSummary]
    /// Caveats worth reading next to the numbers (a failed target, an engine's limits…).
    public var notes: [String]

    public init(
        tool: String, scenario: String, scenarioDescription: String, command: String, started: String, machine: MachineInfo,
        options: [String: String], targets: [TargetInfo], runs: [RunResult], summary: [ClassSummary], notes: [String]
    ) {
        self.tool = tool
        self.scenario = scenario
        self.scenarioDescription = scenarioDescription
        self.command = command
        self.started = started
        self.machine = machine
        self.options = options
        self.targets = targets
        self.runs = runs
        self.summary = summary
        self.notes = notes
    }
}

public struct MachineInfo: Codable, Sendable, Equatable {
    public var processors: Int
    public var memoryGiB: Double
    public var system: String
    /// 1-minute load average when the run started.
    public var loadAverage: Double?

    public init(processors: Int, memoryGiB: Double, system: String, loadAverage: Double?) {
        self.processors = processors
        self.memoryGiB = memoryGiB
        self.system = system
        self.loadAverage = loadAverage
    }
}

public struct TargetInfo: Codable, Sendable, Equatable {
    public var name: String
    /// host:port/database as user (never the password).
    public var endpoint: String
    /// The admin console the Tidegate figures were read from, when the target has one.
    public var admin: String?

    public init(name: String, endpoint: String, admin: String?) {
        self.name = name
        self.endpoint = endpoint
        self.admin = admin
    }
}

/// Latency figures in milliseconds (recorded in microseconds).
public struct LatencySummary: Codable, Sendable, Equatable {
    public var count: UInt64
    public var meanMs: Double
    public var p50Ms: Double
    public var p90Ms: Double
    public var p99Ms: Double
    public var p999Ms: Double
    public var maxMs: Double

    public init(count: UInt64, meanMs: Double, p50Ms: Double, p90Ms: Double, p99Ms: Double, p999Ms: Double, maxMs: Double) {
        self.count = count
        self.meanMs = meanMs
        self.p50Ms = p50Ms
        self.p90Ms = p90Ms
        self.p99Ms = p99Ms
        self.p999Ms = p999Ms
        self.maxMs = maxMs
    }

    /// From a histogram of microseconds; all zero when it is empty.
    public init(microseconds histogram: Histogram<UInt64>) {
        let count = histogram.totalCount
        guard count > 0 else {
            self.init(count: 0, meanMs: 0, p50Ms: 0, p90Ms: 0, p99Ms: 0, p999Ms: 0, maxMs: 0)
            return
        }
        func ms(_ value: UInt64) -> Double { Double(value) / 1000 }
        self.init(
            count: count, meanMs: histogram.mean / 1000, p50Ms: ms(histogram.valueAtPercentile(50)),
            p90Ms: ms(histogram.valueAtPercentile(90)), p99Ms: ms(histogram.valueAtPercentile(99)),
            p999Ms: ms(histogram.valueAtPercentile(99.9)), maxMs: ms(histogram.max))
    }
}

/// One second of a run.
public struct TimelinePoint: Codable, Sendable, Equatable {
    /// Seconds since the run started (1 = the first second).
    public var second: Int
    /// Completed transactions of the run's first class in that second (all classes in `byClass`).
    public var transactions: UInt64
    public var byClass: [String: UInt64]
    public var errors: UInt64
    /// p99 latency of the transactions completed in that second, all classes.
    public var p99Ms: Double?
    /// Cache hits / (hits + misses) over that second, from the admin console; nil without one or
    /// when there were no lookups.
    public var hitRatio: Double?

    public init(second: Int, transactions: UInt64, byClass: [String: UInt64], errors: UInt64, p99Ms: Double?, hitRatio: Double?) {
        self.second = second
        self.transactions = transactions
        self.byClass = byClass
        self.errors = errors
        self.p99Ms = p99Ms
        self.hitRatio = hitRatio
    }
}

/// One statement kind of a scenario (latest price, 1m bars…).
public struct KindResult: Codable, Sendable, Equatable {
    public var name: String
    public var latency: LatencySummary
    public var errors: UInt64

    public init(name: String, latency: LatencySummary, errors: UInt64) {
        self.name = name
        self.latency = latency
        self.errors = errors
    }
}

/// One class of clients in a run: `reads`, `writes` (mixed has both), `queries` (passthrough).
public struct ClassResult: Codable, Sendable, Equatable {
    public var name: String
    /// Completed transactions, failed ones included.
    public var transactions: UInt64
    /// Transactions per second over the measured time.
    public var throughput: Double
    /// Of the successful transactions.
    public var latency: LatencySummary
    /// Failed transactions by SQLSTATE (`connection` for a connection lost, `pgbench` for a pgbench
    /// client abort whose SQLSTATE pgbench does not print).
    public var errors: [String: UInt64]
    /// The first message seen for each SQLSTATE.
    public var errorMessages: [String: String]
    public var kinds: [KindResult]

    public init(
        name: String, transactions: UInt64, throughput: Double, latency: LatencySummary, errors: [String: UInt64],
        errorMessages: [String: String], kinds: [KindResult]
    ) {
        self.name = name
        self.transactions = transactions
        self.throughput = throughput
        self.latency = latency
        self.errors = errors
        self.errorMessages = errorMessages
        self.kinds = kinds
    }

    public var errorCount: UInt64 { self.errors.values.reduce(0, +) }
}

/// Insert coalescing over one run, from `SHOW BATCHES` (per relation).
public struct BatchFigures: Codable, Sendable, Equatable {
    public var relation: String
    /// Over the run (after − before).
    public var statements: Int64
    public var rows: Int64
    public var batches: Int64
    public var rejects: Int64
    public var duplicates: Int64
    public var errors: Int64
    /// Rows per batch over the run (rows / batches).
    public var rowsPerBatch: Double?
    /// As SHOW BATCHES gave them at the end (its last 1,024 batches).
    public var p50Rows: Double?
    public var p99Rows: Double?
    public var p50DelayMs: Double?
    public var p99DelayMs: Double?
    public var p50CommitMs: Double?
    public var p99CommitMs: Double?

    public init(
        relation: String, statements: Int64, rows: Int64, batches: Int64, rejects: Int64, duplicates: Int64, errors: Int64,
        rowsPerBatch: Double?, p50Rows: Double?, p99Rows: Double?, p50DelayMs: Double?, p99DelayMs: Double?,
        p50CommitMs: Double?, p99CommitMs: Double?
    ) {
        self.relation = relation
        self.statements = statements
        self.rows = rows
        self.batches = batches
        self.rejects = rejects
        self.duplicates = duplicates
        self.errors = errors
        self.rowsPerBatch = rowsPerBatch
        self.p50Rows = p50Rows
        self.p99Rows = p99Rows
        self.p50DelayMs = p50DelayMs
        self.p99DelayMs = p99DelayMs
        self.p50CommitMs = p50CommitMs
        self.p99CommitMs = p99CommitMs
    }
}

/// What Tidegate's admin console said about one run.
public struct AdminFigures: Codable, Sendable, Equatable {
    /// Over the run (after − before).
    public var cacheHits: Int64?
    public var cacheMisses: Int64?
    public var cacheBypasses: Int64?
    public var batches: [BatchFigures]
    /// Why a figure is missing (cache off, console not answering…).
    public var notes: [String]

    public init(cacheHits: Int64?, cacheMisses: Int64?, cacheBypasses: Int64?, batches: [BatchFigures], notes: [String]) {
        self.cacheHits = cacheHits
        self.cacheMisses = cacheMisses
        self.cacheBypasses = cacheBypasses
        self.batches = batches
        self.notes = notes
    }

    /// hits / (hits + misses); nil without lookups.
    public var hitRatio: Double? {
        guard let hits = self.cacheHits, let misses = self.cacheMisses, hits + misses > 0 else { return nil }
        return Double(hits) / Double(hits + misses)
    }
}

/// One run of one target in one round.
public struct RunResult: Codable, Sendable, Equatable {
    public var round: Int
    public var target: String
    /// `pgbench` or `native` (the tool's own client).
    public var engine: String
    /// Measured seconds (warm-up excluded).
    public var seconds: Double
    public var classes: [ClassResult]
    public var timeline: [TimelinePoint]
    public var admin: AdminFigures?
    /// Set when the run could not be made (target unreachable mid-way, pgbench failed…): the figures are
    /// then left out of the medians.
    public var failure: String?

    public init(
        round: Int, target: String, engine: String, seconds: Double, classes: [ClassResult], timeline: [TimelinePoint],
        admin: AdminFigures?, failure: String?
    ) {
        self.round = round
        self.target = target
        self.engine = engine
        self.seconds = seconds
        self.classes = classes
        self.timeline = timeline
        self.admin = admin
        self.failure = failure
    }
}

/// The medians over a target's successful rounds for one class, and the ratio against the first target.
public struct ClassSummary: Codable, Sendable, Equatable {
    public var target: String
    public var className: String
    /// Rounds that counted (no failure).
    public var rounds: Int
    /// Per counted round, in round order.
    public var throughputs: [Double]
    public var throughputMedian: Double?
    /// throughputMedian / the first target's (same class); nil for the first target itself or when
    /// either is missing.
    public var throughputRatio: Double?
    public var p50Ms: Double?
    public var p90Ms: Double?
    public var p99Ms: Double?
    public var p999Ms: Double?
    /// p99 median / the first target's.
    public var p99Ratio: Double?
    /// Over all counted rounds.
    public var errors: UInt64
    /// Median of the rounds' cache hit ratios, when the target has an admin console.
    public var hitRatio: Double?
    /// Median rows per batch over the rounds (insert coalescing), when there were batches.
    public var rowsPerBatch: Double?

    public init(
        target: String, className: String, rounds: Int, throughputs: [Double], throughputMedian: Double?,
        throughputRatio: Double?, p50Ms: Double?, p90Ms: Double?, p99Ms: Double?, p999Ms: Double?, p99Ratio: Double?,
        errors: UInt64, hitRatio: Double?, rowsPerBatch: Double?
    ) {
        self.target = target
        self.className = className
        self.rounds = rounds
        self.throughputs = throughputs
        self.throughputMedian = throughputMedian
        self.throughputRatio = throughputRatio
        self.p50Ms = p50Ms
        self.p90Ms = p90Ms
        self.p99Ms = p99Ms
        self.p999Ms = p999Ms
        self.p99Ratio = p99Ratio
        self.errors = errors
        self.hitRatio = hitRatio
        self.rowsPerBatch = rowsPerBatch
    }
}
