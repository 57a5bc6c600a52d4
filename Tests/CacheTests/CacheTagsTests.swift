import NIOCore
import SQLAnalysis
import Testing

@testable import Cache

@Suite struct CacheTagsTests {
    let tags = CacheTags(relations: ["ticks": RelationBuckets(levels: BucketLevels(), lateWindowMicros: 5_000_000)], maxTags: 64)
    let minute: Int64 = 60_000_000
    /// 2026-11-02 14:30:00 UTC.
    let day = TimestampText.micros("2026-11-02 14:30:00+00")!.micros

    @Test func aWriteMovesATagEveryReadOfItsInstantHolds() {
        let read = ResolvedDependency(relation: "ticks", range: TimeRange(lower: self.day, upper: self.day + 390 * self.minute), instruments: ["AAPL"])
        let readTags = Set(self.tags.readTags(database: "market", dependencies: [read]))
        #expect(readTags.count <= 64)
        #expect(readTags.contains(self.tags.generationKey))
        #expect(readTags.contains(self.tags.epochKey(database: "market", relation: "ticks")))
        var inside = Set<String>()
        self.tags.writeTags(database: "market", relation: "ticks", instant: self.day + 77 * self.minute + 5, instrument: "AAPL", into: &inside)
        #expect(!inside.isDisjoint(with: readTags))
        // Another instrument, another database, or a minute outside: untouched.
        var other = Set<String>()
        self.tags.writeTags(database: "market", relation: "ticks", instant: self.day + 77 * self.minute, instrument: "MSFT", into: &other)
        self.tags.writeTags(database: "other", relation: "ticks", instant: self.day + 77 * self.minute, instrument: "AAPL", into: &other)
        self.tags.writeTags(database: "market", relation: "ticks", instant: self.day + 391 * self.minute, instrument: "AAPL", into: &other)
        self.tags.writeTags(database: "market", relation: "ticks", instant: self.day - 1, instrument: "AAPL", into: &other)
        #expect(other.isDisjoint(with: readTags))
    }

    @Test func readsOfEveryInstrumentOrTheWholeAxis() {
        let all = ResolvedDependency(relation: "ticks", range: TimeRange(lower: self.day, upper: self.day + self.minute), instruments: nil)
        let whole = ResolvedDependency(relation: "ticks", range: .unbounded, instruments: ["AAPL"])
        let allTags = Set(self.tags.readTags(database: "market", dependencies: [all]))
        let wholeTags = Set(self.tags.readTags(database: "market", dependencies: [whole]))
        var write = Set<String>()
        self.tags.writeTags(database: "market", relation: "ticks", instant: self.day + 10, instrument: "ZZZ", into: &write)
        #expect(!write.isDisjoint(with: allTags))
        var aapl = Set<String>()
        self.tags.writeTags(database: "market", relation: "ticks", instant: 0, instrument: "AAPL", into: &aapl)
        #expect(!aapl.isDisjoint(with: wholeTags))
        // Unknown rows move the epoch, which every entry reads.
        var unknown = Set<String>()
        self.tags.writeTags(database: "market", relation: "ticks", instant: nil, instrument: "AAPL", into: &unknown)
        #expect(unknown == [self.tags.epochKey(database: "market", relation: "ticks")])
        #expect(!unknown.isDisjoint(with: allTags) && !unknown.isDisjoint(with: wholeTags))
    }

    @Test func manyInstrumentsFallBackToAll() {
        let symbols = (0..<100).map { "S\($0)" }
        let read = ResolvedDependency(relation: "ticks", range: TimeRange(lower: self.day, upper: self.day + 3 * self.minute), instruments: symbols)
        let readTags = self.tags.readTags(database: "market", dependencies: [read])
        #expect(readTags.count <= 64)
        #expect(!readTags.contains { $0.contains("|=S") })
    }

    @Test func sealedAndLive() {
        let now = self.day + 1_000 * self.minute
        let old = ResolvedDependency(relation: "ticks", range: TimeRange(lower: self.day, upper: self.day + self.minute), instruments: nil)
        let recent = ResolvedDependency(relation: "ticks", range: TimeRange(lower: now - self.minute, upper: now - 1_000_000), instruments: nil)
        let open = ResolvedDependency(relation: "ticks", range: TimeRange(lower: self.day), instruments: nil)
        #expect(self.tags.isSealed([old], nowMicros: now))
        #expect(!self.tags.isSealed([recent], nowMicros: now))
        #expect(!self.tags.isSealed([open], nowMicros: now))
    }

    @Test func resolvingBoundsFromTextBinaryAndOffsets() {
        var dependency = RelationDependency(relation: "ticks")
        dependency.lowerBounds = [TimeBound(value: .parameter(1), inclusive: true)]
        dependency.upperBounds = [TimeBound(value: .parameter(1), offsetMicros: 86_400_000_000, slackMicros: 10, inclusive: false)]
        dependency.instruments = [.parameter(2)]
        let text = [
            BoundParameter(value: ByteBuffer(string: "2026-11-02 00:00:00+00"), binary: false, typeOID: 0),
            BoundParameter(value: ByteBuffer(string: "AAPL"), binary: false, typeOID: 0),
        ]
        let start = TimestampText.micros("2026-11-02T00:00:00Z")!.micros
        let resolved = DependencyResolver.resolve([dependency], parameters: text, utcSession: false)[0]
        #expect(resolved.range == TimeRange(lower: start, upper: start + 86_400_000_000 + 10))
        #expect(resolved.instruments == ["AAPL"])
        var binary = ByteBuffer()
        binary.writeInteger(start - DependencyResolver.postgresEpochMicros)
        let binaryResolved = DependencyResolver.resolve(
            [dependency], parameters: [BoundParameter(value: binary, binary: true, typeOID: 1184), text[1]], utcSession: false)[0]
        #expect(binaryResolved.range == resolved.range)
        // No zone in a session that is not UTC: widened by the largest zone offsets.
        let local = [BoundParameter(value: ByteBuffer(string: "2026-11-02 00:00"), binary: false, typeOID: 0), text[1]]
        let widened = DependencyResolver.resolve([dependency], parameters: local, utcSession: false)[0]
        #expect(widened.range.lower! == start - 15 * 3_600_000_000)
        #expect(DependencyResolver.resolve([dependency], parameters: local, utcSession: true)[0].range == resolved.range)
        // A NULL or unparsable value leaves the bound open.
        let null = [BoundParameter(value: nil, binary: false, typeOID: 0), BoundParameter(value: nil, binary: false, typeOID: 0)]
        let open = DependencyResolver.resolve([dependency], parameters: null, utcSession: true)[0]
        #expect(open.range == .unbounded && open.instruments == nil)
    }

    @Test func entriesRoundTripAndRejectGarbage() {
        let entry = CacheEntry(
            material: [1, 2, 3], generation: "g1", versions: [5, 0, 77], filledAtMillis: 1_000, expiresAtMillis: 2_000,
            reply: ByteBuffer(string: "reply bytes"))
        let decoded = CacheEntry.decode(entry.encoded())!
        #expect(decoded.material == [1, 2, 3] && decoded.generation == "g1" && decoded.versions == [5, 0, 77])
        #expect(decoded.filledAtMillis == 1_000 && decoded.expiresAtMillis == 2_000 && String(buffer: decoded.reply) == "reply bytes")
        #expect(CacheEntry.decode(ByteBuffer(string: "not an entry")) == nil)
        var truncated = entry.encoded()
        truncated.moveWriterIndex(to: 10)
        #expect(CacheEntry.decode(truncated) == nil)
        // Keys: same parts, same key; a part moved between neighbours, another key.
        #expect(CacheKey(parts: [[1], [2, 3]]) == CacheKey(parts: [[1], [2, 3]]))
        #expect(CacheKey(parts: [[1, 2], [3]]).digest != CacheKey(parts: [[1], [2, 3]]).digest)
    }

    @Test func timestampText() {
        #expect(TimestampText.micros("1970-01-01 00:00:00+00")! == (0, true))
        #expect(TimestampText.micros("1970-01-01")! == (0, false))
        #expect(TimestampText.micros("2000-01-01 00:00:00.5+01")!.micros == 946_684_800_000_000 + 500_000 - 3_600_000_000)
        #expect(TimestampText.micros("2026-11-02T14:30:00-05:30")!.micros == TimestampText.micros("2026-11-02 20:00:00Z")!.micros)
        #expect(TimestampText.micros("infinity")!.micros == Int64.max)
        #expect(TimestampText.micros("2026-02-30") == nil)
        #expect(TimestampText.micros("yesterday") == nil)
        #expect(TimestampText.micros("2026-11-02 25:00") == nil)
    }
}

@Suite struct L1StoreTests {
    func entry(_ size: Int, expires: Int64 = .max) -> CacheEntry {
        CacheEntry(material: [], generation: "g", versions: [], filledAtMillis: 0, expiresAtMillis: expires, reply: ByteBuffer(repeating: 0, count: size))
    }

    @Test func staysWithinItsBudgetAndKeepsWhatIsUsed() {
        let store = L1Store(budget: 10_000)
        for index in 0..<100 {
            store.put("k\(index)", self.entry(500))
            _ = store.get("k0", nowMillis: 0)
            #expect(store.stats.bytes <= 10_000)
        }
        #expect(store.get("k0", nowMillis: 0) != nil)
        #expect(store.get("k1", nowMillis: 0) == nil)
        #expect(store.get("k99", nowMillis: 0) != nil)
        #expect(store.stats.evictions > 0)
    }

    @Test func expiredEntriesAreGoneAndOversizedOnesNeverEnter() {
        let store = L1Store(budget: 10_000)
        store.put("old", self.entry(10, expires: 100))
        #expect(store.get("old", nowMillis: 99) != nil)
        #expect(store.get("old", nowMillis: 100) == nil)
        store.put("huge", self.entry(20_000))
        #expect(store.get("huge", nowMillis: 0) == nil)
        store.put("a", self.entry(10))
        store.removeAll()
        #expect(store.stats.entries == 0 && store.stats.bytes == 0)
    }
}
