import Foundation
import LoadtestCore
import Testing

#if canImport(FoundationXML)
import FoundationXML
#endif

/// A report built by hand: three targets, two rounds, one failed run, errors, cache figures.
enum Sample {
    static func latency(p50: Double, p99: Double) -> LatencySummary {
        LatencySummary(count: 100, meanMs: p50, p50Ms: p50, p90Ms: p50 * 2, p99Ms: p99, p999Ms: p99 * 2, maxMs: p99 * 3)
    }

    static func run(
        _ round: Int, _ target: String, throughput: Double, p50: Double, p99: Double, errors: [String: UInt64] = [:],
        messages: [String: String] = [:], hits: Int64? = nil, misses: Int64? = nil, failure: String? = nil
    ) -> RunResult {
        let result = ClassResult(
            name: "reads", transactions: UInt64(throughput * 10), throughput: throughput, latency: latency(p50: p50, p99: p99),
            errors: errors, errorMessages: messages, kinds: [KindResult(name: "latest_price", latency: latency(p50: p50, p99: p99), errors: 0)])
        let timeline = (1...3).map { second in
            TimelinePoint(
                second: second, transactions: UInt64(throughput) + UInt64(second), byClass: ["reads": UInt64(throughput)], errors: 0, p99Ms: p99,
                hitRatio: hits == nil ? nil : 0.5 + Double(second) / 10)
        }
        let admin = hits.map { AdminFigures(cacheHits: $0, cacheMisses: misses, cacheBypasses: 0, batches: [], notes: []) }
        return RunResult(
            round: round, target: target, engine: "native", seconds: 10, classes: failure == nil ? [result] : [], timeline: failure == nil ? timeline : [],
            admin: admin, failure: failure)
    }

    static func report(errors: Bool = true, cache: Bool = true, names: [String] = ["direct", "pgbouncer", "tidegate"]) -> Report {
        let runs = [
            run(1, names[0], throughput: 100, p50: 2, p99: 10),
            run(1, names[1], throughput: 110, p50: 2.2, p99: 11),
            run(1, names[2], throughput: 900, p50: 0.4, p99: 3, errors: errors ? ["57014": 2] : [:],
                messages: errors ? ["57014": "canceling statement | due to timeout"] : [:], hits: cache ? 90 : nil, misses: cache ? 10 : nil),
            run(2, names[0], throughput: 120, p50: 2, p99: 12),
            run(2, names[1], throughput: 0, p50: 0, p99: 0, failure: "connection lost"),
            run(2, names[2], throughput: 1100, p50: 0.5, p99: 4, hits: cache ? 99 : nil, misses: cache ? 1 : nil),
        ]
        return Report(
            tool: "tidegate-loadtest", scenario: "api-reads", scenarioDescription: "What an API reads.", command: "tidegate-loadtest run --scenario api-reads",
            started: "2026-12-02T10:00:00Z", machine: MachineInfo(processors: 2, memoryGiB: 24, system: "Linux", loadAverage: 0.5),
            options: ["clients": "16", "rounds": "2"], targets: names.map { TargetInfo(name: $0, endpoint: "127.0.0.1:1/market as u", admin: nil) },
            runs: runs, summary: Statistics.summarize(runs: runs, targets: names), notes: ["a note"])
    }

    static func parses(_ xml: String) -> Bool {
        let parser = XMLParser(data: Data(xml.utf8))
        return parser.parse()
    }

    static func count(_ needle: String, in text: String) -> Int { text.components(separatedBy: needle).count - 1 }
}

@Suite struct StatisticsTests {
    @Test func medians() {
        #expect(Statistics.median([3, 1, 2]) == 2)
        #expect(Statistics.median([4, 1, 3, 2]) == 2.5)
        #expect(Statistics.median([]) == nil)
    }

    @Test func ratios() {
        #expect(Statistics.ratio(150, to: 100) == 1.5)
        #expect(Statistics.ratio(150, to: 0) == nil)
        #expect(Statistics.ratio(nil, to: 100) == nil)
        #expect(Statistics.ratio(1, to: nil) == nil)
    }

    @Test func interleaving() {
        #expect(RunPlan.interleaved(targets: ["A", "B", "C"], rounds: 2).map(\.description) == ["A#1", "B#1", "C#1", "A#2", "B#2", "C#2"])
        #expect(RunPlan.interleaved(targets: ["A"], rounds: 0).isEmpty)
    }

    @Test func summaryUsesMediansAndLeavesFailedRunsOut() throws {
        let report = Sample.report()
        let direct = try #require(report.summary.first { $0.target == "direct" })
        let pgbouncer = try #require(report.summary.first { $0.target == "pgbouncer" })
        let tidegate = try #require(report.summary.first { $0.target == "tidegate" })
        #expect(direct.throughputMedian == 110)
        #expect(direct.throughputRatio == nil)
        #expect(direct.p99Ms == 11)
        #expect(pgbouncer.rounds == 1)  // round 2 failed
        #expect(pgbouncer.throughputMedian == 110)
        #expect(pgbouncer.throughputRatio == 1)
        #expect(tidegate.throughputMedian == 1000)
        #expect(abs((tidegate.throughputRatio ?? 0) - 1000.0 / 110) < 1e-9)
        #expect(abs((tidegate.p99Ratio ?? 0) - 3.5 / 11) < 1e-9)
        #expect(tidegate.errors == 2)
        #expect(abs((tidegate.hitRatio ?? 0) - 0.945) < 1e-9)  // median of 0.9 and 0.99
        #expect(report.summary.map(\.target) == ["direct", "pgbouncer", "tidegate"])
    }
}

@Suite struct ReportWriterTests {
    @Test func formatting() {
        #expect(ReportWriter.count(1234567.4) == "1,234,567")
        #expect(ReportWriter.count(999) == "999")
        #expect(ReportWriter.milliseconds(0.4123) == "0.412")
        #expect(ReportWriter.milliseconds(4.381) == "4.38")
        #expect(ReportWriter.milliseconds(12.34) == "12.3")
        #expect(ReportWriter.milliseconds(153.2) == "153")
        #expect(ReportWriter.milliseconds(9208.4) == "9,208")
        #expect(ReportWriter.ratio(9.0909) == "9.09×")
        #expect(ReportWriter.ratio(333.37) == "333×")
        #expect(ReportWriter.ratio(33.337) == "33.3×")
        #expect(ReportWriter.ratio(1234.5) == "1,235×")
        #expect(ReportWriter.ratio(0.46) == "0.46×")
        #expect(ReportWriter.ratio(0.000566) == "0.00057×")
        #expect(ReportWriter.ratio(0.00001) == "<0.0001×")
        #expect(ReportWriter.ratio(0) == "0.00×")
        #expect(ReportWriter.percent(0.974) == "97.4%")
        #expect(ReportWriter.milliseconds(nil) == "–")
        #expect(SVGChart.niceStep(1100) == 500)
        #expect(SVGChart.niceStep(100) == 20)
    }

    @Test func jsonRoundTrips() throws {
        let report = Sample.report()
        let decoded = try JSONDecoder().decode(Report.self, from: Data(try ReportWriter.json(report).utf8))
        #expect(decoded == report)
    }

    @Test func markdownHasTheSummaryRoundsAndErrors() {
        let markdown = ReportWriter.markdown(Sample.report(), charts: ["throughput.svg"])
        // tidegate: median 1,000 tx/s, 9.09× direct's 110; p99 3.50 ms; hit ratio 94.5 %.
        #expect(markdown.contains("| tidegate | 1,000 | 9.09× | 0.450 | 0.900 | 3.50 | 7.00 | 0.32× | 2 | 94.5% | – |"))
        #expect(markdown.contains("| direct | 110 | – |"))
        #expect(markdown.contains("| 2 | pgbouncer | native | 10.0 |"))
        #expect(markdown.contains("| connection lost |"))
        #expect(markdown.contains("| tidegate | reads | 57014 | 2 | canceling statement \\| due to timeout |"))
        #expect(markdown.contains("![throughput](throughput.svg)"))
        #expect(markdown.contains("tidegate-loadtest run --scenario api-reads"))
        #expect(!markdown.contains("No errors."))
        #expect(ReportWriter.markdown(Sample.report(errors: false)).contains("No errors."))
    }

    @Test func largeCountsAreGrouped() throws {
        var report = Sample.report()
        let index = try #require(report.runs.firstIndex { $0.admin != nil })
        report.runs[index].admin?.cacheHits = 188_384
        report.runs[index].admin?.cacheMisses = 1_972
        let markdown = ReportWriter.markdown(report)
        #expect(markdown.contains("| 188,384 | 1,972 | 99.0% |"))
    }

    @Test func chartsAreWellFormedWithOneLinePerTarget() throws {
        let report = Sample.report()
        let throughput = try #require(SVGChart.throughput(report))
        #expect(Sample.parses(throughput))
        #expect(Sample.count("<polyline", in: throughput) == 3)
        let hitRatio = try #require(SVGChart.hitRatio(report))
        #expect(Sample.parses(hitRatio))
        #expect(Sample.count("<polyline", in: hitRatio) == 1)  // only tidegate has cache figures
        #expect(SVGChart.hitRatio(Sample.report(cache: false)) == nil)
        let latency = try #require(SVGChart.latency(report))
        #expect(Sample.parses(latency))
        // The background plus one bar per (percentile, target).
        #expect(Sample.count("<rect", in: latency) == 1 + 4 * 3)
    }

    @Test func namesAreEscapedInCharts() throws {
        let report = Sample.report(names: ["a<b", "c&d", "e\"f"])
        for svg in [SVGChart.throughput(report), SVGChart.latency(report)] {
            let text = try #require(svg)
            #expect(Sample.parses(text))
            #expect(text.contains("a&lt;b") && text.contains("c&amp;d"))
        }
    }

    @Test func writesEveryFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tidegate-report-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let files = try ReportWriter.write(Sample.report(), to: directory)
        #expect(Set(files.map(\.lastPathComponent)) == ["report.json", "report.md", "throughput.svg", "latency.svg", "hit-ratio.svg"])
        let markdown = try String(contentsOf: directory.appendingPathComponent("report.md"), encoding: .utf8)
        #expect(markdown.contains("![hit-ratio](hit-ratio.svg)") && markdown.contains("![latency](latency.svg)"))
        let withoutCache = try ReportWriter.write(Sample.report(cache: false), to: directory.appendingPathComponent("b"))
        #expect(!withoutCache.map(\.lastPathComponent).contains("hit-ratio.svg"))
    }
}
