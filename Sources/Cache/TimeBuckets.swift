/// The time-bucket levels of one market-data relation: level 0 is the base width (e.g. one minute),
/// level n is `base × factor^n`, all aligned to the Unix epoch (UTC). Above the last level sits the
/// relation as a whole. Instants are microseconds since the Unix epoch, as PostgreSQL keeps them.
public struct BucketLevels: Sendable, Equatable {
    public var baseMicros: Int64
    public var factor: Int64
    public var count: Int

    /// Levels `base × factor^0 … base × factor^(count-1)`.
    public init(baseMicros: Int64 = 60_000_000, factor: Int64 = 8, count: Int = 8) {
        precondition(baseMicros > 0 && factor >= 2 && count >= 1, "bucket levels need a positive base, a factor ≥ 2 and a level")
        self.baseMicros = baseMicros
        self.factor = factor
        self.count = count
    }

    public func width(_ level: Int) -> Int64 {
        var width = self.baseMicros
        for _ in 0..<level { width = width.multipliedReportingOverflow(by: self.factor).partialValue }
        return width
    }

    /// The index of the bucket at `level` that holds `instant`.
    public func bucket(_ instant: Int64, level: Int) -> Int64 {
        Self.floorDiv(instant, self.width(level))
    }

    /// The bucket holding `instant` at every level, finest first: what a write at that instant moves.
    public func buckets(containing instant: Int64) -> [Bucket] {
        (0..<self.count).map { Bucket(level: $0, index: self.bucket(instant, level: $0)) }
    }

    /// A small set of aligned buckets whose union holds `range` (a segment-tree cover): at most
    /// `2 × (factor − 1)` per level. When that needs more than `limit` buckets, the cover starts at a
    /// coarser level (it may then hold more than the range, never less). `.whole` when the range is
    /// unbounded or even the coarsest level needs more than `limit`.
    public func cover(_ range: TimeRange, limit: Int = 64) -> Cover {
        guard let lower = range.lower, let upper = range.upper else { return .whole }
        if upper <= lower { return .buckets([]) }
        for startLevel in 0..<self.count {
            if let buckets = self.cover(lower: lower, upper: upper, startLevel: startLevel, limit: limit) {
                return .buckets(buckets)
            }
        }
        return .whole
    }

    private func cover(lower: Int64, upper: Int64, startLevel: Int, limit: Int) -> [Bucket]? {
        var result: [Bucket] = []
        let width = self.width(startLevel)
        // Bucket indices [first, end) at this level hold [lower, upper).
        var first = Self.floorDiv(lower, width)
        var end = Self.floorDiv(upper - 1, width) + 1
        var level = startLevel
        while first < end {
            if level == self.count - 1 {
                guard end - first <= Int64(limit - result.count) else { return nil }
                for index in first..<end { result.append(Bucket(level: level, index: index)) }
                break
            }
            let alignedFirst = Self.ceilDiv(first, self.factor) * self.factor
            let alignedEnd = Self.floorDiv(end, self.factor) * self.factor
            if alignedFirst >= alignedEnd {
                guard end - first <= Int64(limit - result.count) else { return nil }
                for index in first..<end { result.append(Bucket(level: level, index: index)) }
                break
            }
            guard (alignedFirst - first) + (end - alignedEnd) <= Int64(limit - result.count) else { return nil }
            for index in first..<alignedFirst { result.append(Bucket(level: level, index: index)) }
            for index in alignedEnd..<end { result.append(Bucket(level: level, index: index)) }
            first = alignedFirst / self.factor
            end = alignedEnd / self.factor
            level += 1
        }
        return result
    }

    /// The instants a bucket holds: [start, end).
    public func span(_ bucket: Bucket) -> (start: Int64, end: Int64) {
        let width = self.width(bucket.level)
        return (bucket.index * width, bucket.index * width + width)
    }

    static func floorDiv(_ a: Int64, _ b: Int64) -> Int64 {
        let quotient = a / b
        return (a % b != 0 && (a < 0) != (b < 0)) ? quotient - 1 : quotient
    }

    static func ceilDiv(_ a: Int64, _ b: Int64) -> Int64 {
        -Self.floorDiv(-a, b)
    }
}

/// One aligned bucket: its level and its index (instant ÷ width, rounded down).
public struct Bucket: Sendable, Hashable, CustomStringConvertible {
    public var level: Int
    public var index: Int64

    public init(level: Int, index: Int64) {
        self.level = level
        self.index = index
    }

    public var description: String { "L\(self.level)#\(self.index)" }
}

/// What an entry depends on in time: some buckets, or the relation's whole time axis.
public enum Cover: Sendable, Equatable {
    case buckets([Bucket])
    case whole
}

/// A half-open range of instants [lower, upper) in microseconds since the Unix epoch; nil is unbounded.
public struct TimeRange: Sendable, Equatable, CustomStringConvertible {
    public var lower: Int64?
    public var upper: Int64?

    public init(lower: Int64? = nil, upper: Int64? = nil) {
        self.lower = lower
        self.upper = upper
    }

    public static let unbounded = TimeRange()

    public var isEmpty: Bool {
        if let lower, let upper { return upper <= lower }
        return false
    }

    /// Both ranges at once (a conjunction of conditions).
    public func intersection(_ other: TimeRange) -> TimeRange {
        TimeRange(
            lower: [self.lower, other.lower].compactMap { $0 }.max(),
            upper: [self.upper, other.upper].compactMap { $0 }.min())
    }

    /// The smallest range holding both (a disjunction).
    public func union(_ other: TimeRange) -> TimeRange {
        if self.isEmpty { return other }
        if other.isEmpty { return self }
        let lower: Int64? = (self.lower == nil || other.lower == nil) ? nil : min(self.lower!, other.lower!)
        let upper: Int64? = (self.upper == nil || other.upper == nil) ? nil : max(self.upper!, other.upper!)
        return TimeRange(lower: lower, upper: upper)
    }

    public var description: String {
        "[\(self.lower.map(String.init) ?? "-∞"), \(self.upper.map(String.init) ?? "+∞"))"
    }
}
