import Foundation
import Histogram
import LoadtestCore
import NIOCore
import NIOPosix

/// The options a run needs, copied out of the command line.
struct RunSettings: Sendable {
    var scenario: ScenarioName
    var clients: Int
    var writers: Int
    var duration: Int
    var warmup: Int
    var rate: Double
    var writeRate: Double
    var seed: UInt64
    var mode: QueryMode
    var threads: Int
    /// pgbench's scale factor of the passthrough tables.
    var scale: Int
}

/// One run of one target: the engine, the admin console sampled once a second, the figures.
struct RunContext: Sendable {
    let command: RunSettings
    let target: Run.Target
    let round: Int
    let context: MarketContext
    let console: AdminConsole?
    let group: any EventLoopGroup
    let progress: ProgressLine
    let workDirectory: URL

    /// The classes of clients the scenario runs.
    func classes() -> [ClientClass] {
        let seed = self.command.seed
        let mode = self.command.mode
        let context = self.context
        let symbols = context.symbols
        switch self.command.scenario {
        case .passthrough:
            let scale = self.command.scale
            return [
                ClientClass(
                    name: "queries", clients: self.command.clients, rate: self.command.rate, mode: mode,
                    kinds: PassthroughWorkload(scale: scale, seed: seed, client: 0).kinds,
                    makeWorkload: { PassthroughWorkload(scale: scale, seed: seed, client: $0) })
            ]
        case .apiReads:
            return [Self.reads(context: context, clients: self.command.clients, rate: self.command.rate, mode: mode, seed: seed)]
        case .ingest:
            return [Self.writes(symbols: symbols, clients: self.command.clients, rate: self.command.rate, mode: mode, seed: seed, firstClient: 0)]
        case .mixed:
            return [
                Self.reads(context: context, clients: self.command.clients, rate: self.command.rate, mode: mode, seed: seed),
                // Writers numbered apart from the readers: their seeded streams differ from any reader's.
                Self.writes(symbols: symbols, clients: self.command.writers, rate: self.command.writeRate, mode: mode, seed: seed, firstClient: 100_000),
            ]
        }
    }

    static func writes(symbols: [String], clients: Int, rate: Double, mode: QueryMode, seed: UInt64, firstClient: Int) -> ClientClass {
        // trade_ids are unique per run (its start second) and client.
        let runID = Int64(Date().timeIntervalSince1970)
        let clock: @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1_000_000) }
        return ClientClass(
            name: "writes", clients: clients, rate: rate, mode: mode,
            kinds: IngestWorkload(symbols: symbols, seed: seed, client: firstClient, runID: runID, clock: clock).kinds,
            makeWorkload: { IngestWorkload(symbols: symbols, seed: seed, client: firstClient + $0, runID: runID, clock: clock) })
    }

    static func reads(context: MarketContext, clients: Int, rate: Double, mode: QueryMode, seed: UInt64) -> ClientClass {
        ClientClass(
            name: "reads", clients: clients, rate: rate, mode: mode, kinds: APIReadsWorkload(context: context, seed: seed, client: 0).kinds,
            makeWorkload: { APIReadsWorkload(context: context, seed: seed, client: $0) })
    }

    func runNative() async -> RunResult {
        let classes = self.classes()
        let engine = NativeEngine(group: self.group)
        let cacheBefore = await self.console?.cache()
        let batchesBefore = await self.console?.batches() ?? []
        let timeline = TimelineCollector(classes: classes.map(\.name))
        let label = "\(self.target.name) #\(self.round)"
        let duration = self.command.duration
        let console = self.console
        let progress = self.progress
        let cacheState = CacheState(last: cacheBefore)
        do {
            let outcome = try await engine.run(
                spec: self.target.spec, classes: classes, warmup: Double(self.command.warmup), duration: Double(duration)
            ) { second, figures in
                var hitRatio: Double?
                if let console, let now = await console.cache() {
                    hitRatio = cacheState.ratio(now)
                }
                let point = timeline.add(second: second, figures: figures, hitRatio: hitRatio)
                var text = "\(label): \(second)/\(duration) s"
                for (index, clientClass) in classes.enumerated() {
                    text += "  \(clientClass.name) \(ReportWriter.count(Double(point.byClass[clientClass.name] ?? 0)))/s"
                    if index == 0, let p99 = point.p99Ms { text += " p99 \(ReportWriter.milliseconds(p99)) ms" }
                }
                text += "  errors \(point.errors)"
                if let hitRatio { text += String(format: "  cache hits %.1f%%", hitRatio * 100) }
                progress.update(second: second, of: duration, text)
            }
            let cacheAfter = await self.console?.cache()
            let batchesAfter = await self.console?.batches() ?? []
            let admin = self.console.map { _ in
                AdminConsole.figures(cacheBefore: cacheBefore, cacheAfter: cacheAfter, batchesBefore: batchesBefore, batchesAfter: batchesAfter)
            }
            let results = zip(classes, outcome.classes).map { clientClass, figures in
                Self.classResult(name: clientClass.name, kinds: clientClass.kinds.map(\.name), figures: figures, seconds: outcome.seconds)
            }
            var failure = outcome.failure
            if failure == nil, results.allSatisfy({ $0.transactions == 0 }) { failure = "no statement completed" }
            return RunResult(
                round: self.round, target: self.target.name, engine: "native", seconds: outcome.seconds, classes: results,
                timeline: timeline.points, admin: admin, failure: failure)
        } catch {
            return RunResult(
                round: self.round, target: self.target.name, engine: "native", seconds: 0, classes: [], timeline: timeline.points, admin: nil,
                failure: "\(error)")
        }
    }

    func runPgbench() async -> RunResult {
        guard let path = PgbenchEngine.find("pgbench") else {
            return RunResult(round: self.round, target: self.target.name, engine: "pgbench", seconds: 0, classes: [], timeline: [], admin: nil, failure: "pgbench not found")
        }
        let engine = PgbenchEngine(pgbench: path, threads: self.command.threads)
        let cacheBefore = await self.console?.cache()
        let batchesBefore = await self.console?.batches() ?? []
        let label = "\(self.target.name) #\(self.round)"
        let duration = self.command.duration
        let progress = self.progress
        let hitRatios = HitRatioSamples()
        let command = self.command
        let spec = self.target.spec
        let directory = self.workDirectory
        let task = Task.detached { () throws -> PgbenchEngine.Outcome in
            try engine.run(
                spec: spec, mode: command.mode, clients: command.clients, duration: duration, warmup: command.warmup, rate: command.rate,
                workDirectory: directory
            ) { seconds, tps, latency in
                var text = "\(label): \(Int(seconds))/\(duration) s  queries \(ReportWriter.count(tps))/s"
                if let latency { text += " avg \(ReportWriter.milliseconds(latency)) ms" }
                if let ratio = hitRatios.latest { text += String(format: "  cache hits %.1f%%", ratio * 100) }
                progress.update(second: Int(seconds), of: duration, text)
            }
        }
        // Sample the cache once a second while pgbench runs (after its warm-up).
        if let console = self.console {
            let state = CacheState(last: cacheBefore)
            var second = 0
            try? await Task.sleep(nanoseconds: UInt64(command.warmup) * 1_000_000_000)
            _ = state.ratio(await console.cache() ?? AdminConsole.CacheCounters(hits: 0, misses: 0, bypasses: 0))
            while second < duration {
                try? await Task.sleep(nanoseconds: 1_000_000_000)
                second += 1
                if let now = await console.cache() { hitRatios.record(second: second, state.ratio(now)) }
            }
        }
        do {
            let outcome = try await task.value
            let cacheAfter = await self.console?.cache()
            let batchesAfter = await self.console?.batches() ?? []
            let admin = self.console.map { _ in
                AdminConsole.figures(cacheBefore: cacheBefore, cacheAfter: cacheAfter, batchesBefore: batchesBefore, batchesAfter: batchesAfter)
            }
            let result = Self.classResult(name: "queries", kinds: ["point"], figures: outcome.figures, seconds: outcome.seconds)
            let samples = hitRatios.all
            let timeline = outcome.timeline.map { entry in
                TimelinePoint(
                    second: entry.second, transactions: entry.transactions, byClass: ["queries": entry.transactions], errors: entry.errors,
                    p99Ms: entry.histogram.totalCount > 0 ? Double(entry.histogram.valueAtPercentile(99)) / 1000 : nil,
                    hitRatio: samples[entry.second] ?? nil)
            }
            return RunResult(
                round: self.round, target: self.target.name, engine: "pgbench", seconds: outcome.seconds, classes: [result], timeline: timeline,
                admin: admin, failure: outcome.failure)
        } catch {
            return RunResult(round: self.round, target: self.target.name, engine: "pgbench", seconds: 0, classes: [], timeline: [], admin: nil, failure: "\(error)")
        }
    }

    static func classResult(name: String, kinds: [String], figures: ClassFigures, seconds: Double) -> ClassResult {
        ClassResult(
            name: name, transactions: figures.transactions, throughput: seconds > 0 ? Double(figures.transactions) / seconds : 0,
            latency: LatencySummary(microseconds: figures.histogram), errors: figures.errors, errorMessages: figures.messages,
            kinds: kinds.enumerated().map { index, kind in
                KindResult(
                    name: kind, latency: LatencySummary(microseconds: figures.kinds[index]),
                    errors: index < figures.kindErrors.count ? figures.kindErrors[index] : 0)
            })
    }
}

/// Hit ratio between consecutive SHOW CACHE samples.
final class CacheState: @unchecked Sendable {
    private let lock = NSLock()
    private var last: AdminConsole.CacheCounters?

    init(last: AdminConsole.CacheCounters?) { self.last = last }

    func ratio(_ now: AdminConsole.CacheCounters) -> Double? {
        self.lock.lock()
        defer { self.lock.unlock() }
        defer { self.last = now }
        guard let last = self.last else { return nil }
        let hits = now.hits - last.hits
        let lookups = hits + now.misses - last.misses
        return lookups > 0 ? Double(hits) / Double(lookups) : nil
    }
}

final class HitRatioSamples: @unchecked Sendable {
    private let lock = NSLock()
    private var samples: [Int: Double?] = [:]
    private var last: Double?

    func record(second: Int, _ ratio: Double?) {
        self.lock.lock()
        defer { self.lock.unlock() }
        self.samples[second] = ratio
        if let ratio { self.last = ratio }
    }

    var latest: Double? {
        self.lock.lock()
        defer { self.lock.unlock() }
        return self.last
    }

    var all: [Int: Double?] {
        self.lock.lock()
        defer { self.lock.unlock() }
        return self.samples
    }
}

/// The per-second points of a native run; throughput and p99 are the first class's.
final class TimelineCollector: @unchecked Sendable {
    private let lock = NSLock()
    private let classes: [String]
    private var collected: [TimelinePoint] = []

    init(classes: [String]) { self.classes = classes }

    var points: [TimelinePoint] {
        self.lock.lock()
        defer { self.lock.unlock() }
        return self.collected
    }

    func add(second: Int, figures: [ClassFigures], hitRatio: Double?) -> TimelinePoint {
        var byClass: [String: UInt64] = [:]
        for (name, part) in zip(self.classes, figures) { byClass[name] = part.transactions }
        let first = figures.first?.histogram
        let point = TimelinePoint(
            second: second, transactions: figures.first?.transactions ?? 0, byClass: byClass,
            errors: figures.reduce(0) { $0 + $1.errorCount },
            p99Ms: first.flatMap { $0.totalCount > 0 ? Double($0.valueAtPercentile(99)) / 1000 : nil }, hitRatio: hitRatio)
        self.lock.lock()
        self.collected.append(point)
        self.lock.unlock()
        return point
    }
}
