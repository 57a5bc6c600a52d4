import Foundation

/// SplitMix64: small, fast and the same on every platform, so a seed gives the same statements
/// everywhere (Swift's SystemRandomNumberGenerator cannot be seeded).
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { self.state = seed }

    /// A generator for one client of a run: the same (seed, client) always gives the same stream.
    public init(seed: UInt64, stream: UInt64) {
        var mixer = SeededGenerator(seed: seed ^ (stream &* 0x9E37_79B9_7F4A_7C15))
        self.state = mixer.next()
    }

    public mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    public mutating func unit() -> Double { Double(self.next() >> 11) * 0x1.0p-53 }
}

/// Ranks 0..<count drawn with probability proportional to 1 / (rank + 1)^exponent (rank 0 the most
/// likely): the activity of symbols, the recency of ranges.
public struct ZipfDistribution: Sendable, Equatable {
    public let count: Int
    public let exponent: Double
    /// cumulative[k] = P(rank ≤ k); the last is 1.
    private let cumulative: [Double]

    public init(count: Int, exponent: Double) {
        precondition(count > 0, "a Zipf distribution needs at least one rank")
        self.count = count
        self.exponent = exponent
        var weights = (1...count).map { 1 / pow(Double($0), exponent) }
        let total = weights.reduce(0, +)
        var running = 0.0
        for index in weights.indices {
            running += weights[index] / total
            weights[index] = running
        }
        weights[count - 1] = 1
        self.cumulative = weights
    }

    /// P(rank == k).
    public func probability(_ rank: Int) -> Double {
        rank == 0 ? self.cumulative[0] : self.cumulative[rank] - self.cumulative[rank - 1]
    }

    public func sample(using generator: inout SeededGenerator) -> Int {
        let u = generator.unit()
        var low = 0
        var high = self.count - 1
        while low < high {
            let middle = (low + high) / 2
            if self.cumulative[middle] > u { high = middle } else { low = middle + 1 }
        }
        return low
    }
}

/// Picks an index by fixed weights.
public struct WeightedChoice: Sendable, Equatable {
    private let cumulative: [Double]

    public init(weights: [Double]) {
        precondition(!weights.isEmpty && weights.allSatisfy { $0 >= 0 } && weights.contains { $0 > 0 })
        let total = weights.reduce(0, +)
        var running = 0.0
        self.cumulative = weights.map { weight in
            running += weight / total
            return running
        }
    }

    public func sample(using generator: inout SeededGenerator) -> Int {
        let u = generator.unit()
        return self.cumulative.firstIndex(where: { $0 > u }) ?? self.cumulative.count - 1
    }
}
