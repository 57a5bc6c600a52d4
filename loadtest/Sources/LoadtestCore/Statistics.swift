/// Medians, ratios and the interleaved order of runs.
public enum Statistics {
    /// The median (mean of the two middle values for an even count); nil for none.
    public static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }

    /// value / baseline; nil when either is missing or the baseline is not positive.
    public static func ratio(_ value: Double?, to baseline: Double?) -> Double? {
        guard let value, let baseline, baseline > 0 else { return nil }
        return value / baseline
    }

    /// Per (target, class): medians over the rounds without a failure, ratios against the first target of
    /// `targets` (for the same class). Targets come out in the order given, classes in the order of their
    /// first appearance.
    public static func summarize(runs: [RunResult], targets: [String]) -> [ClassSummary] {
        var classNames: [String] = []
        for run in runs {
            for result in run.classes where !classNames.contains(result.name) { classNames.append(result.name) }
        }
        var summaries: [ClassSummary] = []
        for className in classNames {
            var baseline: (throughput: Double?, p99: Double?)?
            for target in targets {
                let counted = runs.filter { $0.target == target && $0.failure == nil }.sorted { $0.round < $1.round }
                let results = counted.compactMap { run in run.classes.first(where: { $0.name == className }) }
                let throughputs = results.map(\.throughput)
                let throughputMedian = median(throughputs)
                let latencies = results.filter { $0.latency.count > 0 }.map(\.latency)
                let p99 = median(latencies.map(\.p99Ms))
                let hitRatios = counted.compactMap { $0.admin?.hitRatio }
                let batchSizes = counted.compactMap { run -> Double? in
                    let figures = run.admin?.batches ?? []
                    let rows = figures.reduce(Int64(0)) { $0 + $1.rows }
                    let batches = figures.reduce(Int64(0)) { $0 + $1.batches }
                    return batches > 0 ? Double(rows) / Double(batches) : nil
                }
                let isBaseline = baseline == nil
                if isBaseline { baseline = (throughputMedian, p99) }
                summaries.append(
                    ClassSummary(
                        target: target, className: className, rounds: results.count, throughputs: throughputs,
                        throughputMedian: throughputMedian,
                        throughputRatio: isBaseline ? nil : ratio(throughputMedian, to: baseline?.throughput),
                        p50Ms: median(latencies.map(\.p50Ms)), p90Ms: median(latencies.map(\.p90Ms)), p99Ms: p99,
                        p999Ms: median(latencies.map(\.p999Ms)), p99Ratio: isBaseline ? nil : ratio(p99, to: baseline?.p99),
                        errors: results.reduce(0) { $0 + $1.errorCount }, hitRatio: median(hitRatios),
                        rowsPerBatch: median(batchSizes)))
            }
        }
        return summaries
    }
}

/// One slot of a run plan.
public struct RunSlot: Sendable, Equatable, CustomStringConvertible {
    public var round: Int
    public var target: String

    public init(round: Int, target: String) {
        self.round = round
        self.target = target
    }

    public var description: String { "\(self.target)#\(self.round)" }
}

public enum RunPlan {
    /// Every target once per round, in the order given, round after round (A B C A B C): a slow drift of
    /// the machine (caches warming, another process, thermal) then falls on every target alike.
    public static func interleaved(targets: [String], rounds: Int) -> [RunSlot] {
        guard rounds > 0 else { return [] }
        return (1...rounds).flatMap { round in targets.map { RunSlot(round: round, target: $0) } }
    }
}
