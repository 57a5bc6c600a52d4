import ArgumentParser
import Foundation
import Histogram
import LoadtestCore
import NIOCore
import NIOPosix

@main
struct TidegateLoadtest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidegate-loadtest",
        abstract: "Market-data load scenarios against named targets side by side, with reports (Markdown, JSON, SVG).",
        subcommands: [Run.self, Prepare.self, Scenarios.self, Render.self],
        defaultSubcommand: Run.self)
}

extension ScenarioName: ExpressibleByArgument {}
extension QueryMode: ExpressibleByArgument {}

/// A message for the person at the terminal and exit status 2: bad input, not a crash.
struct UsageFailure: Error, CustomStringConvertible {
    var description: String

    /// Runs a command's body; a UsageFailure becomes its line on standard error and exit status 2.
    static func reported(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let failure as UsageFailure {
            FileHandle.standardError.write(Data("tidegate-loadtest: \(failure.description)\n".utf8))
            throw ExitCode(2)
        }
    }
}

struct Scenarios: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the scenarios and what they send.")

    func run() {
        for scenario in ScenarioName.allCases {
            print("\(scenario.rawValue)\n  \(scenario.description)\n  tables: \(scenario.requiredTables.joined(separator: ", "))\n")
        }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a scenario against every target, interleaved (A B A B), and write the report.",
        discussion: """
            Targets are NAME=DSN (libpq keyword string or postgresql:// URI), the first the baseline of every ratio:
              tidegate-loadtest run --scenario api-reads \\
                --target 'direct=host=127.0.0.1 port=15432 user=tidegate password=tidegate dbname=market' \\
                --target 'tidegate=host=127.0.0.1 port=6432 user=tidegate password=tidegate dbname=market'
            A target that answers as Tidegate's admin console (database tidegate, same login) has its cache hit ratio and
            batching figures read during the run; --admin NAME=DSN names the console explicitly.
            """)

    @Option(help: "passthrough, api-reads, ingest or mixed (tidegate-loadtest scenarios).")
    var scenario: ScenarioName = .apiReads

    @Option(name: .customLong("target"), help: "NAME=DSN; repeat for each target (the first is the baseline).")
    var targets: [String] = []

    @Option(name: .customLong("admin"), help: "NAME=DSN of a target's Tidegate admin console (default: found by itself).")
    var admins: [String] = []

    @Flag(help: "Do not look for Tidegate admin consoles on the targets.")
    var noAdminDetect = false

    @Option(help: "Clients (readers in mixed, writers in ingest).")
    var clients: Int = 16

    @Option(help: "mixed: writing clients next to the readers.")
    var writers: Int = 8

    @Option(help: "Seconds measured per run.")
    var duration: Int = 20

    @Option(help: "Seconds of load before each run's measurement (not counted).")
    var warmup: Int = 3

    @Option(help: "Rounds: every target runs once per round, in the order given.")
    var rounds: Int = 2

    @Option(help: "Statements per second over all clients (0: closed loop, as fast as answers come). mixed: the readers.")
    var rate: Double = 0

    @Option(help: "mixed: INSERTs per second over all writers (0: closed loop).")
    var writeRate: Double = 1000

    @Option(help: "Seed of symbols, ranges and values: the same seed sends the same statements.")
    var seed: UInt64 = 1

    @Option(help: "simple, extended or prepared (pgbench's -M).")
    var mode: QueryMode = .extended

    @Option(help: "auto (pgbench for passthrough, the native client otherwise), pgbench or native.")
    var engine: String = "auto"

    @Option(help: "Event-loop threads of the native client; pgbench's -j.")
    var threads: Int = 2

    @Option(help: "Directory of the report (default loadtest/out/<scenario>-<time>).")
    var out: String?

    @Option(help: "A title for the report (default: the scenario).")
    var title: String?

    @Option(name: .customLong("note"), help: "A line for the report's notes (the setup of the targets, say); repeatable.")
    var extraNotes: [String] = []

    mutating func validate() throws {
        guard !self.targets.isEmpty else { throw ValidationError("give at least one --target NAME=DSN") }
        guard self.clients > 0, self.clients <= 5000 else { throw ValidationError("--clients must be 1…5000") }
        guard self.duration > 0, self.rounds > 0, self.warmup >= 0 else { throw ValidationError("--duration and --rounds must be positive, --warmup not negative") }
        guard self.rate >= 0, self.writeRate >= 0 else { throw ValidationError("rates cannot be negative") }
        guard ["auto", "pgbench", "native"].contains(self.engine) else { throw ValidationError("--engine is auto, pgbench or native") }
        guard self.threads > 0 else { throw ValidationError("--threads must be positive") }
    }

    func run() async throws {
        try await UsageFailure.reported { try await self.execute() }
    }

    struct Target {
        var name: String
        var spec: ConnectionSpec
        var adminSpec: ConnectionSpec?
    }

    private func execute() async throws {
        let environment = ProcessInfo.processInfo.environment
        var targets: [Target] = []
        for (index, text) in self.targets.enumerated() {
            do {
                let argument = try TargetArgument.parse(text, position: index + 1)
                guard !targets.contains(where: { $0.name == argument.name }) else { throw UsageFailure(description: "target \"\(argument.name)\" is named twice") }
                targets.append(Target(name: argument.name, spec: try ConnectionSpec.parse(argument.dsn, environment: environment), adminSpec: nil))
            } catch let error as ConnectionSpec.ParseError {
                throw UsageFailure(description: "--target \(text.split(separator: "=").first ?? ""): \(error.description)")
            }
        }
        for text in self.admins {
            guard let argument = try? TargetArgument.parse(text, position: 0), let index = targets.firstIndex(where: { $0.name == argument.name }) else {
                throw UsageFailure(description: "--admin \(text): expected NAME=DSN with NAME one of the targets (\(targets.map(\.name).joined(separator: ", ")))")
            }
            do {
                targets[index].adminSpec = try ConnectionSpec.parse(argument.dsn, environment: environment)
            } catch {
                throw UsageFailure(description: "--admin \(argument.name): \(error)")
            }
        }
        let engineName: String
        switch (self.engine, self.scenario) {
        case ("auto", .passthrough): engineName = PgbenchEngine.find("pgbench") == nil ? "native" : "pgbench"
        case ("auto", _): engineName = "native"
        case ("pgbench", .passthrough):
            guard PgbenchEngine.find("pgbench") != nil else { throw UsageFailure(description: "pgbench is not installed (Debian: postgresql-client-15); or use --engine native") }
            engineName = "pgbench"
        case ("pgbench", _):
            throw UsageFailure(description: "pgbench cannot run \(self.scenario.rawValue): it cannot draw a symbol from the data's list by Zipf rank across seven statement kinds (128 scripts at most) nor count errors by SQLSTATE and go on; use --engine native (the default)")
        default: engineName = "native"
        }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: self.threads)
        // The group lives as long as the process (a command-line run).
        let progress = ProgressLine()

        // Preflight: every target reachable, logged in, with the scenario's tables and statements.
        progress.say("checking \(targets.count) target(s) for \(self.scenario.rawValue)…")
        let preflight = Preflight(scenario: self.scenario, group: group)
        var problems: [String] = []
        for target in targets {
            if let problem = await preflight.check(name: target.name, spec: target.spec) { problems.append(problem) }
        }
        guard problems.isEmpty else { throw UsageFailure(description: problems.joined(separator: "\ntidegate-loadtest: ")) }
        let (context, scale) = try await preflight.context(spec: targets[0].spec, name: targets[0].name)
        let settings = RunSettings(
            scenario: self.scenario, clients: self.clients, writers: self.writers, duration: self.duration, warmup: self.warmup, rate: self.rate,
            writeRate: self.writeRate, seed: self.seed, mode: self.mode, threads: self.threads, scale: scale)
        if self.scenario != .passthrough {
            for target in targets {
                if let problem = await preflight.checkStatements(name: target.name, spec: target.spec, context: context) { problems.append(problem) }
            }
            guard problems.isEmpty else { throw UsageFailure(description: problems.joined(separator: "\ntidegate-loadtest: ")) }
        }
        // Admin consoles.
        var consoles: [String: AdminConsole] = [:]
        for target in targets {
            var spec = target.adminSpec
            if spec == nil, !self.noAdminDetect {
                spec = target.spec
                spec?.database = "tidegate"
            }
            guard let spec else { continue }
            if let console = await AdminConsole.open(spec, on: group.next()) {
                consoles[target.name] = console
            } else if target.adminSpec != nil {
                throw UsageFailure(description: "--admin \(target.name): no Tidegate admin console answers at \(spec.endpoint)")
            }
        }
        defer { for console in consoles.values { console.close() } }

        let started = Date()
        let stamp = Self.stamp(started)
        let outDirectory = URL(fileURLWithPath: self.out ?? "loadtest/out/\(self.scenario.rawValue)-\(stamp)")
        let plan = RunPlan.interleaved(targets: targets.map(\.name), rounds: self.rounds)
        var runs: [RunResult] = []
        var notes: [String] = []
        if engineName == "pgbench" {
            notes.append("Engine pgbench (\(PgbenchEngine.find("pgbench") ?? "pgbench")): its built-in select-only script; latencies from its per-transaction log. pgbench does not print SQLSTATEs: an aborted client counts under `pgbench` with the server's message.")
        } else {
            notes.append("Engine native: tidegate-loadtest's own client (SwiftNIO, \(self.threads) event loop(s)), one statement in flight per client, \(self.mode.rawValue) protocol as pgbench -M \(self.mode.rawValue) sends it; latency from the scheduled start with a target rate (no coordinated omission), from the send otherwise.")
        }
        if self.scenario == .apiReads || self.scenario == .mixed {
            notes.append("Data: \(context.symbols.count) symbols, \(context.days.count) trading days (\(context.days.first?.date ?? "–") to \(context.days.last?.date ?? "–")), read from target \(targets[0].name) before the runs.")
        }
        notes += self.extraNotes
        for (position, slot) in plan.enumerated() {
            guard let target = targets.first(where: { $0.name == slot.target }) else { continue }
            progress.say("[\(position + 1)/\(plan.count)] round \(slot.round): \(target.name) (\(target.spec.endpoint)), \(self.scenario.rawValue), \(self.duration) s")
            let runner = RunContext(
                command: settings, target: target, round: slot.round, context: context, console: consoles[target.name], group: group,
                progress: progress, workDirectory: outDirectory.appendingPathComponent("raw/\(target.name)-\(slot.round)"))
            let result = engineName == "pgbench" ? await runner.runPgbench() : await runner.runNative()
            progress.finish()
            if let failure = result.failure { progress.say("  \(target.name) round \(slot.round) failed: \(failure)") }
            runs.append(result)
        }
        let summary = Statistics.summarize(runs: runs, targets: targets.map(\.name))
        var options: [String: String] = [
            "clients": String(self.clients), "duration_s": String(self.duration), "warmup_s": String(self.warmup), "rounds": String(self.rounds),
            "seed": String(self.seed), "mode": self.mode.rawValue, "engine": engineName, "threads": String(self.threads),
            "rate": self.rate > 0 ? String(self.rate) : "closed loop",
        ]
        if self.scenario == .mixed {
            options["writers"] = String(self.writers)
            options["write_rate"] = self.writeRate > 0 ? String(self.writeRate) : "closed loop"
        }
        let report = Report(
            tool: "tidegate-loadtest", scenario: self.title ?? self.scenario.rawValue, scenarioDescription: self.scenario.description,
            command: Self.commandLine(), started: ISO8601DateFormatter().string(from: started), machine: Self.machine(), options: options,
            targets: targets.map { TargetInfo(name: $0.name, endpoint: $0.spec.endpoint, admin: consoles[$0.name]?.spec.endpoint) },
            runs: runs, summary: summary, notes: notes)
        let files = try ReportWriter.write(report, to: outDirectory)
        print(Self.summaryText(report))
        print("report: \(files.map(\.path).joined(separator: ", "))")
        if runs.allSatisfy({ $0.failure != nil }) { throw ExitCode(1) }
    }

    static func stamp(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }

    static func commandLine() -> String {
        CommandLine.arguments.enumerated().map { index, argument in
            // Never write a password into a report.
            let shown = index == 0 ? "tidegate-loadtest" : ConnectionSpec.redacted(argument)
            return shown.contains(" ") || shown.contains("'") ? "'" + shown.replacingOccurrences(of: "'", with: "'\\''") + "'" : shown
        }.joined(separator: " ")
    }

    static func machine() -> MachineInfo {
        var load: Double?
        if let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) { load = Double(text.split(separator: " ").first ?? "") }
        var name = utsname()
        uname(&name)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        }
        let system = "\(field(name.sysname)) \(field(name.release)) \(field(name.machine))"
        return MachineInfo(
            processors: ProcessInfo.processInfo.activeProcessorCount,
            memoryGiB: (Double(ProcessInfo.processInfo.physicalMemory) / 1_073_741_824 * 10).rounded() / 10, system: system, loadAverage: load)
    }

    static func summaryText(_ report: Report) -> String {
        var lines: [String] = []
        for row in report.summary {
            let throughput = row.throughputMedian.map { ReportWriter.count($0) } ?? "–"
            let ratio = row.throughputRatio.map { " (\(ReportWriter.ratio($0)))" } ?? ""
            let p99 = row.p99Ms.map { "\(ReportWriter.milliseconds($0)) ms" } ?? "–"
            let hit = row.hitRatio.map { String(format: ", cache hits %.1f%%", $0 * 100) } ?? ""
            lines.append("\(row.target) \(row.className): \(throughput) tx/s\(ratio), p99 \(p99), errors \(row.errors)\(hit)")
        }
        return lines.joined(separator: "\n")
    }
}
