/// Growth of a relation (or the database) from its size history, and the forecast of a full disk. Pure.
public enum StorageGrowth {
    public struct Sample: Sendable, Equatable {
        /// Seconds since 1970.
        public var at: Double
        public var bytes: Double

        public init(at: Double, bytes: Double) {
            self.at = at
            self.bytes = bytes
        }
    }

    /// Bytes per day: the slope of the least-squares line through the samples; nil with fewer than two
    /// samples or when they were all taken at the same time.
    public static func bytesPerDay(_ samples: [Sample]) -> Double? {
        guard samples.count >= 2 else { return nil }
        // Centre the times so large epoch values do not cost precision.
        let n = Double(samples.count)
        let meanT = samples.reduce(0) { $0 + $1.at } / n
        let meanB = samples.reduce(0) { $0 + $1.bytes } / n
        var covariance = 0.0
        var variance = 0.0
        for sample in samples {
            let t = sample.at - meanT
            covariance += t * (sample.bytes - meanB)
            variance += t * t
        }
        guard variance > 0 else { return nil }
        return covariance / variance * 86_400
    }

    public struct Forecast: Sendable, Equatable {
        /// Days until the disk is full; nil when it cannot be told (`reason` says why).
        public var days: Double?
        public var reason: String?
    }

    /// Days until `diskBytes` are used, from the bytes used now and the growth per day.
    public static func daysUntilFull(diskBytes: Int64, usedBytes: Int64, bytesPerDay: Double?) -> Forecast {
        guard diskBytes > 0 else { return Forecast(days: nil, reason: "storage.disk_bytes is 0 (disk size unknown)") }
        guard let growth = bytesPerDay else {
            return Forecast(days: nil, reason: "not enough history (at least two samples in the window)")
        }
        let free = diskBytes - usedBytes
        guard free > 0 else { return Forecast(days: 0, reason: "the database is already larger than storage.disk_bytes") }
        guard growth > 0 else { return Forecast(days: nil, reason: "not growing") }
        return Forecast(days: Double(free) / growth, reason: nil)
    }
}
