import ArgumentParser
import Foundation
import LoadtestCore

/// Writes a report's Markdown and charts again from its report.json: after a change to the
/// report writer, or to put a copy of a run's report elsewhere. The figures are the JSON's own.
struct Render: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write report.md and the SVG charts again from a report.json.")

    @Argument(help: "A report.json written by `tidegate-loadtest run`.")
    var report: String

    @Option(help: "Where to write the files (default: the JSON's directory).")
    var out: String?

    func run() throws {
        let source = URL(fileURLWithPath: self.report)
        let decoded: Report
        do {
            decoded = try JSONDecoder().decode(Report.self, from: Data(contentsOf: source))
        } catch let error as DecodingError {
            FileHandle.standardError.write(Data("tidegate-loadtest: \(source.path) is not a tidegate-loadtest report: \(error)\n".utf8))
            throw ExitCode(2)
        } catch {
            FileHandle.standardError.write(Data("tidegate-loadtest: cannot read \(source.path): \(error.localizedDescription)\n".utf8))
            throw ExitCode(2)
        }
        let directory = self.out.map { URL(fileURLWithPath: $0) } ?? source.deletingLastPathComponent()
        let files = try ReportWriter.write(decoded, to: directory)
        print("report: \(files.map(\.path).joined(separator: ", "))")
    }
}
