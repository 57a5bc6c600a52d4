import Testing

@testable import Cache

@Suite struct TimeBucketsTests {
    let levels = BucketLevels(baseMicros: 60_000_000, factor: 8, count: 8)
    let minute: Int64 = 60_000_000

    @Test func widthsAndIndices() {
        #expect(self.levels.width(0) == self.minute)
        #expect(self.levels.width(2) == 64 * self.minute)
        #expect(self.levels.bucket(0, level: 0) == 0)
        #expect(self.levels.bucket(-1, level: 0) == -1)
        #expect(self.levels.bucket(self.minute - 1, level: 0) == 0)
        #expect(self.levels.bucket(self.minute, level: 0) == 1)
        #expect(self.levels.buckets(containing: 9 * self.minute).map(\.index) == [9, 1, 0, 0, 0, 0, 0, 0])
    }

    @Test func coverOfAlignedAndUnalignedRanges() {
        // One minute exactly: one bucket.
        #expect(self.levels.cover(TimeRange(lower: 0, upper: self.minute)) == .buckets([Bucket(level: 0, index: 0)]))
        // 8 aligned minutes: one level-1 bucket.
        #expect(self.levels.cover(TimeRange(lower: 8 * self.minute, upper: 16 * self.minute)) == .buckets([Bucket(level: 1, index: 1)]))
        // Minutes 7..<17: minute 7, level-1 bucket 1, minute 16.
        let cover = self.levels.cover(TimeRange(lower: 7 * self.minute, upper: 17 * self.minute))
        #expect(cover == .buckets([Bucket(level: 0, index: 7), Bucket(level: 0, index: 16), Bucket(level: 1, index: 1)]))
        #expect(self.levels.cover(TimeRange(lower: 5, upper: 5)) == .buckets([]))
        #expect(self.levels.cover(TimeRange(lower: 5)) == .whole)
        #expect(self.levels.cover(TimeRange(upper: 5)) == .whole)
    }

    /// Random ranges: the cover holds every instant of the range, its buckets do not overlap, it stays
    /// within the limit, and a write at an instant of the range moves one of its buckets.
    @Test func randomCoversHoldTheirRanges() {
        var generator = SplitMix64(seed: 42)
        for _ in 0..<2_000 {
            let lower = Int64(bitPattern: generator.next() % 4_000_000_000_000_000) - 1_000_000_000_000_000
            let length = Int64(generator.next() % UInt64([self.minute * 3, self.minute * 2_000, self.minute * 600_000][Int(generator.next() % 3)]))
            let range = TimeRange(lower: lower, upper: lower + length + 1)
            let limit = [8, 24, 64][Int(generator.next() % 3)]
            guard case .buckets(let buckets) = self.levels.cover(range, limit: limit) else {
                // Only a range too long for the coarsest level within the limit has no cover.
                #expect(length / self.levels.width(self.levels.count - 1) >= Int64(limit) - 2)
                continue
            }
            #expect(buckets.count <= limit)
            let spans = buckets.map { self.levels.span($0) }.sorted { $0.start < $1.start }
            #expect(spans.first!.start <= range.lower! && spans.last!.end >= range.upper!)
            for (a, b) in zip(spans, spans.dropFirst()) { #expect(a.end == b.start, "gap or overlap in \(buckets)") }
            let set = Set(buckets)
            for _ in 0..<8 {
                let instant = range.lower! + Int64(generator.next() % UInt64(length + 1))
                #expect(!set.isDisjoint(with: self.levels.buckets(containing: instant)))
            }
        }
    }

    @Test func rangeAlgebra() {
        let a = TimeRange(lower: 10, upper: 20)
        #expect(a.intersection(TimeRange(lower: 15)) == TimeRange(lower: 15, upper: 20))
        #expect(a.union(TimeRange(lower: 30, upper: 40)) == TimeRange(lower: 10, upper: 40))
        #expect(a.union(TimeRange(upper: 5)) == TimeRange(lower: nil, upper: 20))
        #expect(TimeRange(lower: 3, upper: 3).isEmpty)
    }
}

/// A small deterministic generator for property tests.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
