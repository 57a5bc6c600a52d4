import Foundation

/// Writes a Report as Markdown, JSON and SVG charts.
public enum ReportWriter {
    public static func json(_ report: Report) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(report), as: UTF8.self)
    }

    /// Writes report.json, the charts there is something to draw in, and report.md; returns the files.
    public static func write(_ report: Report, to directory: URL) throws -> [URL] {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var files: [URL] = []
        let jsonURL = directory.appendingPathComponent("report.json")
        try self.json(report).write(to: jsonURL, atomically: true, encoding: .utf8)
        files.append(jsonURL)
        var charts: [String] = []
        let drawn: [(String, String?)] = [
            ("throughput.svg", SVGChart.throughput(report)), ("latency.svg", SVGChart.latency(report)),
            ("hit-ratio.svg", SVGChart.hitRatio(report)),
        ]
        for (name, svg) in drawn {
            guard let svg else { continue }
            let url = directory.appendingPathComponent(name)
            try svg.write(to: url, atomically: true, encoding: .utf8)
            files.append(url)
            charts.append(name)
        }
        let markdownURL = directory.appendingPathComponent("report.md")
        try self.markdown(report, charts: charts).write(to: markdownURL, atomically: true, encoding: .utf8)
        files.append(markdownURL)
        return files
    }

    // MARK: Formatting

    /// 12,345 (no decimals).
    public static func count(_ value: Double?) -> String {
        guard let value, value.isFinite else { return "–" }
        let rounded = Int64(value.rounded())
        var digits = String(abs(rounded))
        var groups: [String] = []
        while digits.count > 3 {
            groups.insert(String(digits.suffix(3)), at: 0)
            digits.removeLast(3)
        }
        groups.insert(digits, at: 0)
        return (rounded < 0 ? "-" : "") + groups.joined(separator: ",")
    }

    /// Three significant digits: 0.412, 4.38, 12.3, 153.
    public static func count<Integer: BinaryInteger>(_ value: Integer?) -> String {
        value.map { count(Double($0)) } ?? "–"
    }

    public static func milliseconds(_ value: Double?) -> String {
        guard let value, value.isFinite else { return "–" }
        if value >= 1000 { return count(value) }
        if value >= 100 { return String(format: "%.0f", value) }
        if value >= 10 { return String(format: "%.1f", value) }
        if value >= 1 { return String(format: "%.2f", value) }
        return String(format: "%.3f", value)
    }

    public static func ratio(_ value: Double?) -> String {
        guard let value, value.isFinite else { return "–" }
        // Three significant figures down to 0.1, two below it (a p99 that a cache cuts by a
        // thousand times stays readable), and a floor where the figure says nothing more.
        if value >= 1000 { return count(value) + "×" }
        if value >= 100 { return String(format: "%.0f×", value) }
        if value >= 10 { return String(format: "%.1f×", value) }
        if value >= 0.1 || value == 0 { return String(format: "%.2f×", value) }
        if value < 0.0001 { return "<0.0001×" }
        return String(format: "%.2g×", value)
    }

    public static func percent(_ value: Double?) -> String {
        guard let value, value.isFinite else { return "–" }
        return String(format: "%.1f%%", value * 100)
    }

    static func cell(_ text: String) -> String {
        text.replacingOccurrences(of: "|", with: "\\|").replacingOccurrences(of: "\n", with: " ")
    }

    // MARK: Markdown

    public static func markdown(_ report: Report, charts: [String] = []) -> String {
        var lines: [String] = []
        let baseline = report.targets.first?.name ?? "first"
        lines.append("# tidegate-loadtest: \(report.scenario)")
        lines.append("")
        lines.append(report.scenarioDescription)
        lines.append("")
        lines.append("## Setup")
        lines.append("")
        lines.append("- Started: \(report.started)")
        let load = report.machine.loadAverage.map { String(format: ", load average %.2f at the start", $0) } ?? ""
        lines.append(
            "- Machine: \(report.machine.processors) processors, \(String(format: "%.1f", report.machine.memoryGiB)) GiB, \(report.machine.system)\(load)")
        lines.append("- Options: " + report.options.sorted { $0.key < $1.key }.map { "`\($0.key)=\($0.value)`" }.joined(separator: ", "))
        for target in report.targets {
            let admin = target.admin.map { "; admin console \($0)" } ?? ""
            lines.append("- Target `\(target.name)`: \(target.endpoint)\(admin)")
        }
        lines.append("")
        let classNames = report.summary.reduce(into: [String]()) { names, row in
            if !names.contains(row.className) { names.append(row.className) }
        }
        lines.append("## Summary")
        lines.append("")
        lines.append("Medians over the rounds that ran; ratios against `\(baseline)`.")
        for className in classNames {
            lines.append("")
            if classNames.count > 1 { lines.append("### \(className)\n") }
            lines.append(
                "| target | tx/s (median) | × \(cell(baseline)) | p50 ms | p90 ms | p99 ms | p99.9 ms | p99 × \(cell(baseline)) | errors | cache hit ratio | rows/batch |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for row in report.summary where row.className == className {
                lines.append(
                    "| \(cell(row.target)) | \(count(row.throughputMedian)) | \(ratio(row.throughputRatio)) | \(milliseconds(row.p50Ms)) | \(milliseconds(row.p90Ms)) | \(milliseconds(row.p99Ms)) | \(milliseconds(row.p999Ms)) | \(ratio(row.p99Ratio)) | \(row.errors) | \(percent(row.hitRatio)) | \(row.rowsPerBatch.map { String(format: "%.1f", $0) } ?? "–") |"
                )
            }
        }
        lines.append("")
        lines.append("## Rounds")
        lines.append("")
        lines.append("| round | target | engine | seconds | " + classNames.map { "\(cell($0)) tx/s | \(cell($0)) p99 ms" }.joined(separator: " | ") + " | errors | cache hit ratio | failure |")
        lines.append("|---:|---|---|---:|" + classNames.map { _ in "---:|---:" }.joined(separator: "|") + "|---:|---:|---|")
        for run in report.runs {
            let perClass = classNames.map { name -> String in
                let result = run.classes.first { $0.name == name }
                return "\(count(result?.throughput)) | \(milliseconds(result.map { $0.latency.count > 0 ? $0.latency.p99Ms : nil } ?? nil))"
            }
            let errors = run.classes.reduce(UInt64(0)) { $0 + $1.errorCount }
            lines.append(
                "| \(run.round) | \(cell(run.target)) | \(run.engine) | \(String(format: "%.1f", run.seconds)) | \(perClass.joined(separator: " | ")) | \(count(errors)) | \(percent(run.admin?.hitRatio)) | \(cell(run.failure ?? "")) |"
            )
        }
        lines.append("")
        lines.append("## Errors by SQLSTATE")
        lines.append("")
        var errorRows: [String] = []
        for target in report.targets {
            for className in classNames {
                var counts: [String: UInt64] = [:]
                var messages: [String: String] = [:]
                for run in report.runs where run.target == target.name {
                    guard let result = run.classes.first(where: { $0.name == className }) else { continue }
                    for (code, value) in result.errors { counts[code, default: 0] += value }
                    for (code, message) in result.errorMessages where messages[code] == nil { messages[code] = message }
                }
                for code in counts.keys.sorted() {
                    errorRows.append("| \(cell(target.name)) | \(cell(className)) | \(cell(code)) | \(count(counts[code] ?? 0)) | \(cell(messages[code] ?? "")) |")
                }
            }
        }
        if errorRows.isEmpty {
            lines.append("No errors.")
        } else {
            lines.append("Over all rounds (failed runs included).")
            lines.append("")
            lines.append("| target | class | SQLSTATE | count | first message |")
            lines.append("|---|---|---|---:|---|")
            lines += errorRows
        }
        lines.append("")
        lines.append("## Statement kinds")
        lines.append("")
        lines.append("Per target, the last round that ran (count of successful statements, their p50 and p99, errors).")
        lines.append("")
        lines.append("| target | class | kind | count | p50 ms | p99 ms | errors |")
        lines.append("|---|---|---|---:|---:|---:|---:|")
        for target in report.targets {
            guard let run = report.runs.last(where: { $0.target == target.name && $0.failure == nil }) else { continue }
            for result in run.classes {
                for kind in result.kinds {
                    lines.append(
                        "| \(cell(target.name)) | \(cell(result.name)) | \(cell(kind.name)) | \(count(kind.latency.count)) | \(milliseconds(kind.latency.count > 0 ? kind.latency.p50Ms : nil)) | \(milliseconds(kind.latency.count > 0 ? kind.latency.p99Ms : nil)) | \(count(kind.errors)) |"
                    )
                }
            }
        }
        let withAdmin = report.runs.filter { $0.admin != nil }
        if !withAdmin.isEmpty {
            lines.append("")
            lines.append("## Tidegate figures")
            lines.append("")
            lines.append("From the admin console over each run (`SHOW CACHE` and `SHOW BATCHES` before and after).")
            lines.append("")
            lines.append("| round | target | cache hits | misses | hit ratio | bypasses | notes |")
            lines.append("|---:|---|---:|---:|---:|---:|---|")
            for run in withAdmin {
                guard let admin = run.admin else { continue }
                lines.append(
                    "| \(run.round) | \(cell(run.target)) | \(count(admin.cacheHits)) | \(count(admin.cacheMisses)) | \(percent(admin.hitRatio)) | \(count(admin.cacheBypasses)) | \(cell(admin.notes.joined(separator: "; "))) |"
                )
            }
            let batches = withAdmin.flatMap { run in (run.admin?.batches ?? []).map { (run, $0) } }
            if !batches.isEmpty {
                lines.append("")
                lines.append(
                    "| round | target | relation | statements | rows | batches | rows/batch | p50 rows | p99 rows | p50 delay ms | p99 delay ms | p50 commit ms | p99 commit ms | rejects | duplicates | errors |")
                lines.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
                for (run, batch) in batches {
                    func number(_ value: Double?) -> String { value.map { String(format: "%.1f", $0) } ?? "–" }
                    lines.append(
                        "| \(run.round) | \(cell(run.target)) | \(cell(batch.relation)) | \(count(batch.statements)) | \(count(batch.rows)) | \(count(batch.batches)) | \(number(batch.rowsPerBatch)) | \(number(batch.p50Rows)) | \(number(batch.p99Rows)) | \(milliseconds(batch.p50DelayMs)) | \(milliseconds(batch.p99DelayMs)) | \(milliseconds(batch.p50CommitMs)) | \(milliseconds(batch.p99CommitMs)) | \(count(batch.rejects)) | \(count(batch.duplicates)) | \(count(batch.errors)) |"
                    )
                }
            }
        }
        if !charts.isEmpty {
            lines.append("")
            lines.append("## Charts")
            lines.append("")
            for chart in charts { lines.append("![\(chart.replacingOccurrences(of: ".svg", with: ""))](\(chart))") }
        }
        if !report.notes.isEmpty {
            lines.append("")
            lines.append("## Notes")
            lines.append("")
            for note in report.notes { lines.append("- \(note)") }
        }
        lines.append("")
        lines.append("## Command")
        lines.append("")
        lines.append("```sh")
        lines.append(report.command)
        lines.append("```")
        lines.append("")
        return lines.joined(separator: "\n")
    }
}

/// Standalone SVG charts (open in a browser; GitHub shows them in Markdown).
public enum SVGChart {
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    static let width = 760.0
    static let height = 380.0
    static let left = 70.0
    static let right = 150.0
    static let top = 40.0
    static let bottom = 50.0

    static func colour(_ report: Report, _ target: String) -> String {
        let index = report.targets.firstIndex { $0.name == target } ?? 0
        return palette[index % palette.count]
    }

    public static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
            .replacingOccurrences(of: "'", with: "&apos;")
    }

    /// A 1-2-5 step that gives about five ticks up to `maximum`.
    public static func niceStep(_ maximum: Double) -> Double {
        guard maximum > 0 else { return 1 }
        let raw = maximum / 5
        let magnitude = pow(10, floor(log10(raw)))
        for factor in [1.0, 2, 5, 10] where raw <= factor * magnitude { return factor * magnitude }
        return 10 * magnitude
    }

    static func header(_ title: String) -> [String] {
        [
            #"<?xml version="1.0" encoding="UTF-8"?>"#,
            #"<svg xmlns="http://www.w3.org/2000/svg" width="\#(Int(width))" height="\#(Int(height))" viewBox="0 0 \#(Int(width)) \#(Int(height))" font-family="sans-serif" font-size="12">"#,
            #"<rect x="0" y="0" width="\#(Int(width))" height="\#(Int(height))" fill="white"/>"#,
            #"<text x="\#(Int(width / 2))" y="22" text-anchor="middle" font-size="15">\#(escape(title))</text>"#,
        ]
    }

    static func legend(_ report: Report, _ names: [String]) -> [String] {
        names.enumerated().map { index, name in
            let y = top + 10 + Double(index) * 20
            let x = width - right + 15
            return #"<line x1="\#(x)" y1="\#(y)" x2="\#(x + 22)" y2="\#(y)" stroke="\#(colour(report, name))" stroke-width="3"/><text x="\#(x + 28)" y="\#(y + 4)">\#(escape(name))</text>"#
        }
    }

    /// Lines over seconds: per target, the mean over its successful rounds of each second's value.
    static func lines(
        _ report: Report, title: String, yLabel: String, maximum fixedMaximum: Double?, format: (Double) -> String,
        value: (TimelinePoint) -> Double?
    ) -> String? {
        var series: [(String, [(Int, Double)])] = []
        for target in report.targets {
            var sums: [Int: (Double, Int)] = [:]
            for run in report.runs where run.target == target.name && run.failure == nil {
                for point in run.timeline {
                    guard let v = value(point) else { continue }
                    let entry = sums[point.second] ?? (0, 0)
                    sums[point.second] = (entry.0 + v, entry.1 + 1)
                }
            }
            let points = sums.keys.sorted().map { ($0, sums[$0]!.0 / Double(sums[$0]!.1)) }
            if !points.isEmpty { series.append((target.name, points)) }
        }
        guard !series.isEmpty else { return nil }
        let lastSecond = max(1, series.flatMap { $0.1.map(\.0) }.max() ?? 1)
        let dataMaximum = series.flatMap { $0.1.map(\.1) }.max() ?? 1
        let step = niceStep(fixedMaximum ?? dataMaximum)
        let maximum = fixedMaximum ?? max(step, ceil(dataMaximum / step) * step)
        let plotWidth = width - left - right
        let plotHeight = height - top - bottom
        func x(_ second: Int) -> Double { left + Double(second) / Double(lastSecond) * plotWidth }
        func y(_ v: Double) -> Double { top + plotHeight - min(v, maximum) / maximum * plotHeight }
        var svg = header(title)
        var tick = 0.0
        while tick <= maximum + step / 1000 {
            svg.append(#"<line x1="\#(left)" y1="\#(y(tick))" x2="\#(left + plotWidth)" y2="\#(y(tick))" stroke="rgb(224,224,224)"/>"#)
            svg.append(#"<text x="\#(left - 6)" y="\#(y(tick) + 4)" text-anchor="end">\#(escape(format(tick)))</text>"#)
            tick += step
        }
        let secondStep = max(1, Int(niceStep(Double(lastSecond))))
        for second in stride(from: 0, through: lastSecond, by: secondStep) {
            svg.append(#"<text x="\#(x(second))" y="\#(top + plotHeight + 18)" text-anchor="middle">\#(second)</text>"#)
        }
        svg.append(#"<line x1="\#(left)" y1="\#(top + plotHeight)" x2="\#(left + plotWidth)" y2="\#(top + plotHeight)" stroke="black"/>"#)
        svg.append(#"<line x1="\#(left)" y1="\#(top)" x2="\#(left)" y2="\#(top + plotHeight)" stroke="black"/>"#)
        svg.append(#"<text x="\#(left + plotWidth / 2)" y="\#(height - 12)" text-anchor="middle">seconds of the run (mean over rounds)</text>"#)
        svg.append(#"<text x="16" y="\#(top + plotHeight / 2)" text-anchor="middle" transform="rotate(-90 16 \#(top + plotHeight / 2))">\#(escape(yLabel))</text>"#)
        for (name, points) in series {
            let coordinates = points.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ")
            svg.append(#"<polyline fill="none" stroke="\#(colour(report, name))" stroke-width="2" points="\#(coordinates)"/>"#)
        }
        svg += legend(report, series.map(\.0))
        svg.append("</svg>")
        return svg.joined(separator: "\n") + "\n"
    }

    public static func throughput(_ report: Report) -> String? {
        let className = report.summary.first?.className ?? "transactions"
        return lines(report, title: "\(report.scenario): \(className) per second", yLabel: "\(className) per second", maximum: nil,
            format: { ReportWriter.count($0) }, value: { Double($0.transactions) })
    }

    public static func hitRatio(_ report: Report) -> String? {
        lines(report, title: "\(report.scenario): cache hit ratio", yLabel: "cache hits / lookups (%)", maximum: 100,
            format: { String(format: "%.0f%%", $0) }, value: { $0.hitRatio.map { $0 * 100 } })
    }

    /// Grouped bars: p50, p90, p99, p99.9 of each target (medians over rounds, first class), log scale.
    public static func latency(_ report: Report) -> String? {
        let className = report.summary.first?.className
        let rows = report.summary.filter { $0.className == className && $0.p50Ms != nil }
        guard !rows.isEmpty else { return nil }
        let groups: [(String, (ClassSummary) -> Double?)] = [("p50", \.p50Ms), ("p90", \.p90Ms), ("p99", \.p99Ms), ("p99.9", \.p999Ms)]
        let values = rows.flatMap { row in groups.compactMap { $0.1(row) } }.filter { $0 > 0 }
        guard let smallest = values.min(), let largest = values.max() else { return nil }
        let low = floor(log10(smallest))
        let high = max(low + 1, ceil(log10(largest)))
        let plotWidth = width - left - right
        let plotHeight = height - top - bottom
        func y(_ v: Double) -> Double { top + plotHeight - (log10(max(v, pow(10, low))) - low) / (high - low) * plotHeight }
        var svg = header("\(report.scenario): latency percentiles (ms, log scale)")
        var decade = low
        while decade <= high {
            let v = pow(10, decade)
            svg.append(#"<line x1="\#(left)" y1="\#(y(v))" x2="\#(left + plotWidth)" y2="\#(y(v))" stroke="rgb(224,224,224)"/>"#)
            svg.append(#"<text x="\#(left - 6)" y="\#(y(v) + 4)" text-anchor="end">\#(escape(ReportWriter.milliseconds(v)))</text>"#)
            decade += 1
        }
        let groupWidth = plotWidth / Double(groups.count)
        let barWidth = min(40, groupWidth * 0.8 / Double(rows.count))
        for (groupIndex, group) in groups.enumerated() {
            let groupLeft = left + Double(groupIndex) * groupWidth + (groupWidth - barWidth * Double(rows.count)) / 2
            svg.append(#"<text x="\#(left + (Double(groupIndex) + 0.5) * groupWidth)" y="\#(top + plotHeight + 18)" text-anchor="middle">\#(group.0)</text>"#)
            for (index, row) in rows.enumerated() {
                guard let v = group.1(row), v > 0 else { continue }
                let x = groupLeft + Double(index) * barWidth
                let top = y(v)
                func f(_ value: Double) -> String { String(format: "%.1f", value) }
                svg.append(
                    #"<rect x="\#(f(x))" y="\#(f(top))" width="\#(f(barWidth - 2))" height="\#(f(self.top + plotHeight - top))" fill="\#(colour(report, row.target))"/>"#)
                svg.append(
                    #"<text x="\#(f(x + barWidth / 2 - 1))" y="\#(f(top - 3))" text-anchor="middle" font-size="10">\#(ReportWriter.milliseconds(v))</text>"#)
            }
        }
        svg.append(#"<line x1="\#(left)" y1="\#(top + plotHeight)" x2="\#(left + plotWidth)" y2="\#(top + plotHeight)" stroke="black"/>"#)
        svg.append(#"<line x1="\#(left)" y1="\#(top)" x2="\#(left)" y2="\#(top + plotHeight)" stroke="black"/>"#)
        svg.append(#"<text x="16" y="\#(top + plotHeight / 2)" text-anchor="middle" transform="rotate(-90 16 \#(top + plotHeight / 2))">milliseconds (median over rounds)</text>"#)
        svg += legend(report, rows.map(\.target))
        svg.append("</svg>")
        return svg.joined(separator: "\n") + "\n"
    }
}
