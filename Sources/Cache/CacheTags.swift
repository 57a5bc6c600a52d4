import NIOCore
import SQLAnalysis

/// The time buckets of one cached relation, with its late-arrival window.
public struct RelationBuckets: Sendable, Equatable {
    public var levels: BucketLevels
    /// Buckets that end more than this long ago are sealed: entries that only read sealed buckets live long.
    public var lateWindowMicros: Int64

    public init(levels: BucketLevels = BucketLevels(), lateWindowMicros: Int64 = 5_000_000) {
        self.levels = levels
        self.lateWindowMicros = lateWindowMicros
    }
}

/// A dependency with its parameters bound: the instants and instruments a result can come from.
public struct ResolvedDependency: Sendable, Equatable {
    public var relation: String
    public var range: TimeRange
    /// nil: every instrument.
    public var instruments: [String]?

    public init(relation: String, range: TimeRange, instruments: [String]?) {
        self.relation = relation
        self.range = range
        self.instruments = instruments
    }
}

/// A bound parameter as the client sent it in Bind.
public struct BoundParameter: Sendable {
    public var value: ByteBuffer?
    public var binary: Bool
    /// The type the client declared in Parse (0: left to the server).
    public var typeOID: UInt32

    public init(value: ByteBuffer?, binary: Bool, typeOID: UInt32) {
        self.value = value
        self.binary = binary
        self.typeOID = typeOID
    }
}

/// Redis key names of versions, and what a read depends on and a write moves. Every key starts with
/// `prefix` (default `tg:`). A version is the LSN of the latest write into its tag, as a decimal integer.
///
/// - `<prefix>v:<db>|<relation>|<level>|<bucket>|=<instrument>` and `…|*`: one bucket of one level.
/// - `<prefix>v:<db>|<relation>|w|=<instrument>` and `…|w|*`: the whole time axis (unbounded reads).
/// - `<prefix>v:<db>|<relation>|e`: the relation's epoch, moved by writes whose rows are unknown
///   (TRUNCATE, an UPDATE through Tidegate) and by CACHE FLUSH; every entry of the relation reads it.
/// - `<prefix>g`: the generation; every entry reads it. Replaced when invalidations may have been lost
///   (Redis was unreachable while writes committed), which invalidates everything at once.
public struct CacheTags: Sendable {
    public var prefix: String
    public var relations: [String: RelationBuckets]
    /// At most this many tags per entry; wider reads fall back to coarser buckets or to every instrument.
    public var maxTags: Int

    /// Largest UTC offsets of a time zone (+14:00 … −12:00): a literal without a zone, read in a session
    /// whose TimeZone is not UTC, is somewhere within this of its UTC reading.
    static let zoneSlackMicros: Int64 = 15 * 3_600_000_000

    public init(prefix: String = "tg:", relations: [String: RelationBuckets], maxTags: Int = 64) {
        self.prefix = prefix
        self.relations = relations
        self.maxTags = max(maxTags, 4)
    }

    public var generationKey: String { self.prefix + "g" }

    static func escape(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 == UInt8(ascii: "|") || $0 == UInt8(ascii: "%") }) else { return text }
        return text.replacingOccurrences(of: "%", with: "%25").replacingOccurrences(of: "|", with: "%7C")
    }

    func base(_ database: String, _ relation: String) -> String {
        self.prefix + "v:" + Self.escape(database) + "|" + relation + "|"
    }

    static func instrumentPart(_ instrument: String?) -> String {
        instrument.map { "=" + Self.escape($0) } ?? "*"
    }

    public func epochKey(database: String, relation: String) -> String { self.base(database, relation) + "e" }

    public func bucketKey(database: String, relation: String, bucket: Bucket, instrument: String?) -> String {
        self.base(database, relation) + "\(bucket.level)|\(bucket.index)|" + Self.instrumentPart(instrument)
    }

    public func wholeKey(database: String, relation: String, instrument: String?) -> String {
        self.base(database, relation) + "w|" + Self.instrumentPart(instrument)
    }

    /// The tags an entry reads (the generation first), for its dependencies in `database`.
    public func readTags(database: String, dependencies: [ResolvedDependency]) -> [String] {
        var tags = [self.generationKey]
        for dependency in dependencies {
            tags.append(self.epochKey(database: database, relation: dependency.relation))
            guard let buckets = self.relations[dependency.relation] else { continue }
            let budget = max(1, (self.maxTags - 2) / max(1, dependencies.count))
            var instruments: [String?] = dependency.instruments.map { Array(Set($0)).sorted() } ?? [nil]
            if instruments.count > budget { instruments = [nil] }
            let perInstrument = max(1, budget / instruments.count)
            switch buckets.levels.cover(dependency.range, limit: perInstrument) {
            case .whole:
                for instrument in instruments {
                    tags.append(self.wholeKey(database: database, relation: dependency.relation, instrument: instrument))
                }
            case .buckets(let cover):
                for instrument in instruments {
                    for bucket in cover {
                        tags.append(
                            self.bucketKey(database: database, relation: dependency.relation, bucket: bucket, instrument: instrument))
                    }
                }
            }
        }
        return tags
    }

    /// The tags a written row moves: its bucket at every level and the whole axis, for its instrument
    /// and for every instrument. A row whose instant or instrument is unknown moves the epoch.
    public func writeTags(database: String, relation: String, instant: Int64?, instrument: String?, into tags: inout Set<String>) {
        guard let buckets = self.relations[relation] else { return }
        guard let instant, let instrument else {
            tags.insert(self.epochKey(database: database, relation: relation))
            return
        }
        for bucket in buckets.levels.buckets(containing: instant) {
            tags.insert(self.bucketKey(database: database, relation: relation, bucket: bucket, instrument: instrument))
            tags.insert(self.bucketKey(database: database, relation: relation, bucket: bucket, instrument: nil))
        }
        tags.insert(self.wholeKey(database: database, relation: relation, instrument: instrument))
        tags.insert(self.wholeKey(database: database, relation: relation, instrument: nil))
    }

    /// Whether every bucket the dependencies read ended more than the late-arrival window before `now`.
    public func isSealed(_ dependencies: [ResolvedDependency], nowMicros: Int64) -> Bool {
        dependencies.allSatisfy { dependency in
            guard let upper = dependency.range.upper, let buckets = self.relations[dependency.relation] else { return false }
            return upper <= nowMicros - buckets.lateWindowMicros
        }
    }
}

/// Binds a cache profile's conditions to the values of one execution.
public enum DependencyResolver {
    /// `utcSession`: the session's TimeZone is UTC, so literals without a zone are exact.
    public static func resolve(
        _ dependencies: [RelationDependency], parameters: [BoundParameter], utcSession: Bool
    ) -> [ResolvedDependency] {
        dependencies.map { dependency in
            var range = TimeRange.unbounded
            for bound in dependency.lowerBounds {
                guard let (instant, exact) = Self.instant(bound.value, parameters: parameters), instant != Int64.min else { continue }
                if instant == Int64.max { range = range.intersection(TimeRange(lower: instant)); continue }
                let slack = bound.slackMicros + (exact || utcSession ? 0 : CacheTags.zoneSlackMicros)
                let x = instant &+ bound.offsetMicros
                range = range.intersection(TimeRange(lower: (bound.inclusive ? x : x &+ 1) &- slack))
            }
            for bound in dependency.upperBounds {
                guard let (instant, exact) = Self.instant(bound.value, parameters: parameters), instant != Int64.max else { continue }
                if instant == Int64.min { range = range.intersection(TimeRange(upper: instant)); continue }
                let slack = bound.slackMicros + (exact || utcSession ? 0 : CacheTags.zoneSlackMicros)
                let x = instant &+ bound.offsetMicros
                range = range.intersection(TimeRange(upper: (bound.inclusive ? x &+ 1 : x) &+ slack))
            }
            var instruments: [String]?
            if let values = dependency.instruments {
                let texts = values.map { Self.text($0, parameters: parameters) }
                if texts.allSatisfy({ $0 != nil }) { instruments = texts.map { $0! } }
            }
            return ResolvedDependency(relation: dependency.relation, range: range, instruments: instruments)
        }
    }

    /// PostgreSQL's binary timestamp: microseconds since 2000-01-01 UTC.
    static let postgresEpochMicros: Int64 = 946_684_800_000_000

    /// The instant of a value, and whether it is exact (its text named the zone, or it was binary).
    static func instant(_ value: ConditionValue, parameters: [BoundParameter]) -> (Int64, Bool)? {
        switch value {
        case .literal(let text):
            return TimestampText.micros(text).map { ($0.micros, $0.hasZone) }
        case .parameter(let number):
            guard number >= 1, number <= parameters.count, let buffer = parameters[number - 1].value else { return nil }
            let parameter = parameters[number - 1]
            if parameter.binary {
                // timestamptz or timestamp (1184, 1114), or left to the server (the column's type).
                guard [0, 1184, 1114].contains(parameter.typeOID), buffer.readableBytes == 8,
                    let raw = buffer.getInteger(at: buffer.readerIndex, as: Int64.self)
                else { return nil }
                if raw == Int64.max || raw == Int64.min { return (raw, true) }
                return (raw &+ Self.postgresEpochMicros, true)
            }
            return TimestampText.micros(String(buffer: buffer)).map { ($0.micros, $0.hasZone) }
        }
    }

    static func text(_ value: ConditionValue, parameters: [BoundParameter]) -> String? {
        switch value {
        case .literal(let text): return text
        case .parameter(let number):
            guard number >= 1, number <= parameters.count, let buffer = parameters[number - 1].value else { return nil }
            // A text value is the same bytes in either format.
            let typeOID = parameters[number - 1].typeOID
            guard !parameters[number - 1].binary || [0, 25, 1043, 19].contains(typeOID) else { return nil }
            return String(buffer: buffer)
        }
    }
}
