import ArgumentParser
import Foundation
import LoadtestCore
import NIOPosix

/// Loads what a scenario reads: pgbench's tables (passthrough) or market data from
/// loadtest/gen-market-data (the others).
struct Prepare: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create the data a scenario needs on one target (usually the primary, directly).")

    @Option(help: "passthrough, api-reads, ingest or mixed.")
    var scenario: ScenarioName = .apiReads

    @Option(help: "The DSN to load through (libpq keyword string or URI).")
    var target: String

    @Option(help: "passthrough: pgbench's scale factor (100,000 accounts each).")
    var scale: Int = 10

    @Option(help: "Market data: ticks in all.")
    var ticks: Int = 1_000_000

    @Option(help: "Market data: trading days.")
    var days: Int = 5

    @Option(help: "Market data: instruments.")
    var symbols: Int = 50

    @Option(help: "Market data: seed of the generator.")
    var seed: Int = 1

    @Option(help: "The market-data generator (default: loadtest/gen-market-data of this checkout).")
    var generator: String?

    func run() async throws {
        try await UsageFailure.reported { try await self.execute() }
    }

    private func execute() async throws {
        let environment = ProcessInfo.processInfo.environment
        let spec: ConnectionSpec
        do {
            spec = try ConnectionSpec.parse(self.target, environment: environment)
        } catch {
            throw UsageFailure(description: "--target: \(error)")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // The group lives as long as the process (a command-line run).
        do {
            let connection = try await PGConnection.connect(spec, on: group.next()).get()
            connection.close()
        } catch {
            throw UsageFailure(description: "\(spec.endpoint): \(error)")
        }
        var childEnvironment = environment
        if let password = spec.password { childEnvironment["PGPASSWORD"] = password }
        let (program, arguments): (String, [String])
        switch self.scenario {
        case .passthrough:
            guard let pgbench = PgbenchEngine.find("pgbench") else { throw UsageFailure(description: "pgbench is not installed (Debian: postgresql-client-15)") }
            (program, arguments) = (pgbench, ["-i", "-s", String(self.scale), "--quiet", "-h", spec.host, "-p", String(spec.port), "-U", spec.user, spec.database])
        case .apiReads, .ingest, .mixed:
            guard let generator = self.generator ?? Self.findGenerator() else {
                throw UsageFailure(description: "loadtest/gen-market-data not found; run from the checkout or give --generator PATH")
            }
            var dsn = "host=\(spec.host) port=\(spec.port) user=\(spec.user) dbname=\(spec.database)"
            if let password = spec.password { dsn += " password=\(password)" }
            (program, arguments) = (
                "/usr/bin/env",
                ["python3", generator, "--dsn", dsn, "--ticks", String(self.ticks), "--days", String(self.days), "--symbols", String(self.symbols),
                 "--seed", String(self.seed), "--truncate", "--refresh", "--progress"]
            )
        }
        FileHandle.standardError.write(Data("tidegate-loadtest: \(([program] + arguments).joined(separator: " ").replacingOccurrences(of: spec.password.map { "password=\($0)" } ?? "\u{0}", with: "password=…"))\n".utf8))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        process.environment = childEnvironment
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw UsageFailure(description: "\(URL(fileURLWithPath: arguments.first == "python3" ? arguments[1] : program).lastPathComponent) failed with status \(process.terminationStatus) (its message is above)")
        }
    }

    static func findGenerator() -> String? {
        var candidates = [FileManager.default.currentDirectoryPath + "/loadtest/gen-market-data"]
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<6 {
            candidates.append(directory.appendingPathComponent("loadtest/gen-market-data").path)
            directory = directory.deletingLastPathComponent()
        }
        return candidates.first { FileManager.default.fileExists(atPath: $0) }
    }
}
