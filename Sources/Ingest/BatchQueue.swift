import DequeModule

/// When a batch goes: a batch is sent once it has `maxRows` rows or `maxBytes` bytes of values, once its
/// first statement has waited `maxDelayNanos`, or at once when no batch of its group is committing (the
/// primary is then idle, and waiting would only add latency). At most `maxConcurrent` batches of a group
/// commit at a time; while they do, rows gather into the next one.
public struct BatchPolicy: Sendable, Equatable {
    public var maxRows: Int
    public var maxBytes: Int
    public var maxDelayNanos: Int64
    public var maxConcurrent: Int
    /// While fewer batches than this commit, a batch goes at once (the primary has room for it).
    public var eagerBelow: Int

    public init(
        maxRows: Int = 5_000, maxBytes: Int = 4 << 20, maxDelayNanos: Int64 = 5_000_000, maxConcurrent: Int = 2, eagerBelow: Int = 1
    ) {
        self.maxRows = max(1, maxRows)
        self.maxBytes = max(1, maxBytes)
        self.maxDelayNanos = max(0, maxDelayNanos)
        self.maxConcurrent = max(1, maxConcurrent)
        self.eagerBelow = min(max(0, eagerBelow), self.maxConcurrent)
    }
}

/// The flush decisions of one batch group, as a state machine over sizes and times (nanoseconds of any
/// monotonic clock). The group keeps the statements themselves, in the same order; `.flush(n)` means: send
/// the first n as one batch.
public struct BatchQueue: Sendable {
    public enum Action: Sendable, Equatable {
        case flush(statements: Int)
        /// Call `timerFired` at this time (replaces any earlier timer).
        case armTimer(at: Int64)
    }

    struct Entry: Sendable {
        var rows: Int
        var bytes: Int
        var enqueuedAt: Int64
    }

    public let policy: BatchPolicy
    private var entries = Deque<Entry>()
    public private(set) var queuedRows = 0
    public private(set) var queuedBytes = 0
    public private(set) var inFlight = 0
    private var timer: Int64?

    public init(policy: BatchPolicy) { self.policy = policy }

    public var queuedStatements: Int { self.entries.count }
    /// When the oldest waiting statement arrived.
    public var oldestEnqueuedAt: Int64? { self.entries.first?.enqueuedAt }

    public mutating func enqueued(rows: Int, bytes: Int, now: Int64) -> [Action] {
        self.entries.append(Entry(rows: rows, bytes: bytes, enqueuedAt: now))
        self.queuedRows += rows
        self.queuedBytes += bytes
        return self.decide(now: now)
    }

    public mutating func timerFired(now: Int64) -> [Action] {
        self.timer = nil
        return self.decide(now: now)
    }

    /// A batch of this group has committed or failed.
    public mutating func flushFinished(now: Int64) -> [Action] {
        self.inFlight = max(0, self.inFlight - 1)
        return self.decide(now: now)
    }

    private mutating func decide(now: Int64) -> [Action] {
        var actions: [Action] = []
        while self.inFlight < self.policy.maxConcurrent, let oldest = self.entries.first {
            let due = self.inFlight < self.policy.eagerBelow || self.queuedRows >= self.policy.maxRows
                || self.queuedBytes >= self.policy.maxBytes || now - oldest.enqueuedAt >= self.policy.maxDelayNanos
            guard due else { break }
            var count = 0
            var rows = 0
            var bytes = 0
            for entry in self.entries {
                if count > 0 && (rows + entry.rows > self.policy.maxRows || bytes + entry.bytes > self.policy.maxBytes) { break }
                count += 1
                rows += entry.rows
                bytes += entry.bytes
            }
            self.entries.removeFirst(count)
            self.queuedRows -= rows
            self.queuedBytes -= bytes
            self.inFlight += 1
            actions.append(.flush(statements: count))
        }
        if let oldest = self.entries.first, self.inFlight < self.policy.maxConcurrent {
            let at = oldest.enqueuedAt + self.policy.maxDelayNanos
            if self.timer != at {
                self.timer = at
                actions.append(.armTimer(at: at))
            }
        }
        return actions
    }
}

/// Error isolation: a batch that fails is split in halves, each retried as a batch of its own, until a
/// failing part is one statement, whose sender gets PostgreSQL's error for it. With one bad statement among
/// n, that is about 2·log2(n) extra statements; the good rows commit.
public enum BatchSplit {
    /// The two halves of `range` (a failed batch), or nil when it is one statement.
    public static func halves(_ range: Range<Int>) -> (Range<Int>, Range<Int>)? {
        guard range.count > 1 else { return nil }
        let middle = range.lowerBound + range.count / 2
        return (range.lowerBound..<middle, middle..<range.upperBound)
    }
}
