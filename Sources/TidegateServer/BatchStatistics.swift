import CoreMetrics
import NIOConcurrencyHelpers
import NIOCore

/// The batcher's counters per (database, relation), shared by every loop (updated once per statement or
/// batch, under a lock), for SHOW BATCHES and /metrics.
final class BatchStatistics: Sendable {
    struct Key: Hashable, Sendable {
        var database: String
        var relation: String
    }

    /// Metric handles of one relation (the relation name comes from the configuration: a bounded label).
    struct Handles: Sendable {
        let rows: Counter
        let batches: Counter
        let statements: Counter
        let rejects: Counter
        let duplicates: Counter
        let errors: Counter
        let queuedRows: Gauge
        let batchRows: Recorder
        let delay: Timer
        let commit: Timer

        init(relation: String) {
            let dimensions = [("relation", relation)]
            self.rows = Counter(label: "tidegate_batch_rows_total", dimensions: dimensions)
            self.batches = Counter(label: "tidegate_batch_batches_total", dimensions: dimensions)
            self.statements = Counter(label: "tidegate_batch_statements_total", dimensions: dimensions)
            self.rejects = Counter(label: "tidegate_batch_rejects_total", dimensions: dimensions)
            self.duplicates = Counter(label: "tidegate_batch_duplicates_total", dimensions: dimensions)
            self.errors = Counter(label: "tidegate_batch_errors_total", dimensions: dimensions)
            self.queuedRows = Gauge(label: "tidegate_batch_queue_rows", dimensions: dimensions)
            self.batchRows = Recorder(label: "tidegate_batch_size_rows", dimensions: dimensions, aggregate: true)
            self.delay = Timer(label: "tidegate_batch_delay", dimensions: dimensions)
            self.commit = Timer(label: "tidegate_batch_commit_duration", dimensions: dimensions)
        }
    }

    struct Entry: Sendable {
        var rows = 0
        var batches = 0
        /// Rows sent in batches (inserted or not).
        var batchedRows = 0
        var statements = 0
        var rejects = 0
        var duplicates = 0
        var errors = 0
        /// Statements and rows waiting or committing, per loop.
        var queued: [ObjectIdentifier: (rows: Int, bytes: Int, statements: Int)] = [:]
        var unbatchable: [String: Int] = [:]
        /// The last batches: rows, delay of their first statement and commit time (nanoseconds).
        var recentRows = Ring(capacity: 1_024)
        var recentDelays = Ring(capacity: 1_024)
        var recentCommits = Ring(capacity: 1_024)
        /// (uptime nanoseconds, rows) of the last commits, for rows per second over 10 s.
        var throughput = Ring(capacity: 4_096)
        var throughputTimes = Ring(capacity: 4_096)
    }

    /// A fixed-size ring of the latest values.
    struct Ring: Sendable {
        private(set) var values: [Int64] = []
        private var next = 0
        let capacity: Int

        init(capacity: Int) { self.capacity = capacity }

        mutating func append(_ value: Int64) {
            if self.values.count < self.capacity {
                self.values.append(value)
            } else {
                self.values[self.next] = value
                self.next = (self.next + 1) % self.capacity
            }
        }

        func percentile(_ p: Double) -> Int64? {
            guard !self.values.isEmpty else { return nil }
            let sorted = self.values.sorted()
            return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p + 0.5))]
        }
    }

    private let entries = NIOLockedValueBox([Key: Entry]())
    private let handles = NIOLockedValueBox([String: Handles]())

    private func handles(_ relation: String) -> Handles {
        self.handles.withLockedValue { handles in
            if let existing = handles[relation] { return existing }
            let created = Handles(relation: relation)
            handles[relation] = created
            return created
        }
    }

    private func update(_ database: String, _ relation: String, _ body: (inout Entry) -> Void) {
        self.entries.withLockedValue { body(&$0[Key(database: database, relation: relation), default: Entry()]) }
    }

    /// A statement taken by a loop's batcher (counted), or one that left it: the queue depth moves.
    func queued(database: String, relation: String, loop: ObjectIdentifier, rows: Int, bytes: Int) {
        self.moveQueue(database, relation, loop: loop, rows: rows, bytes: bytes, statements: 1, taken: true)
    }

    func dequeued(database: String, relation: String, loop: ObjectIdentifier, rows: Int, bytes: Int) {
        self.moveQueue(database, relation, loop: loop, rows: -rows, bytes: -bytes, statements: -1, taken: false)
    }

    private func moveQueue(_ database: String, _ relation: String, loop: ObjectIdentifier, rows: Int, bytes: Int, statements: Int, taken: Bool) {
        let key = Key(database: database, relation: relation)
        let depth = self.entries.withLockedValue { entries -> Int in
            entries[key, default: Entry()].queued[loop, default: (0, 0, 0)].rows += rows
            entries[key, default: Entry()].queued[loop, default: (0, 0, 0)].bytes += bytes
            entries[key, default: Entry()].queued[loop, default: (0, 0, 0)].statements += statements
            if taken { entries[key, default: Entry()].statements += 1 }
            // The gauge is per relation: every database's waiting rows of it.
            return entries.reduce(0) { total, element in
                element.key.relation == relation ? total + element.value.queued.values.reduce(0) { $0 + $1.rows } : total
            }
        }
        let handles = self.handles(relation)
        if taken { handles.statements.increment() }
        handles.queuedRows.record(depth)
    }

    func rejected(database: String, relation: String) {
        self.update(database, relation) { $0.rejects += 1 }
        self.handles(relation).rejects.increment()
    }

    func failed(database: String, relation: String) {
        self.update(database, relation) { $0.errors += 1 }
        self.handles(relation).errors.increment()
    }

    func unbatchable(database: String, relation: String, reason: String) {
        self.update(database, relation) { $0.unbatchable[reason, default: 0] += 1 }
    }

    /// A batch was sent: its rows and how long its first statement waited.
    func flushed(database: String, relation: String, rows: Int, delayNanos: Int64) {
        self.update(database, relation) { entry in
            entry.batches += 1
            entry.batchedRows += rows
            entry.recentRows.append(Int64(rows))
            entry.recentDelays.append(delayNanos)
        }
        let handles = self.handles(relation)
        handles.batches.increment()
        handles.batchRows.record(rows)
        handles.delay.recordNanoseconds(delayNanos)
    }

    /// A batch finished (every statement has its outcome).
    func committed(database: String, relation: String, rows: Int, duplicates: Int, errors: Int, commitNanos: Int64) {
        let now = Int64(NIODeadline.now().uptimeNanoseconds)
        self.update(database, relation) { entry in
            entry.rows += rows
            entry.duplicates += duplicates
            entry.errors += errors
            entry.recentCommits.append(commitNanos)
            entry.throughput.append(Int64(rows))
            entry.throughputTimes.append(now)
        }
        let handles = self.handles(relation)
        handles.rows.increment(by: rows)
        if duplicates > 0 { handles.duplicates.increment(by: duplicates) }
        if errors > 0 { handles.errors.increment(by: errors) }
        handles.commit.recordNanoseconds(commitNanos)
    }

    /// One row per (database, relation), for SHOW BATCHES.
    func snapshot() -> [(Key, Entry)] {
        self.entries.withLockedValue { $0.sorted { ($0.key.database, $0.key.relation) < ($1.key.database, $1.key.relation) } }
    }

    /// Rows committed per second over the last 10 seconds.
    static func rowsPerSecond(_ entry: Entry) -> Double {
        let now = Int64(NIODeadline.now().uptimeNanoseconds)
        let since = now - 10_000_000_000
        var rows: Int64 = 0
        for (time, count) in zip(entry.throughputTimes.values, entry.throughput.values) where time >= since { rows += count }
        return Double(rows) / 10
    }
}
