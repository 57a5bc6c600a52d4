import Foundation
import Histogram
import LoadtestCore

/// pgbench as the load engine (passthrough): `pgbench -n -S -M <mode> -c <clients> -j <threads> -T
/// <seconds> -P 1 -l`, its progress lines shown live, its per-transaction log read into the figures.
struct PgbenchEngine {
    var pgbench: String
    var threads: Int

    struct Outcome {
        var figures: ClassFigures
        var seconds: Double
        var timeline: [(second: Int, transactions: UInt64, errors: UInt64, histogram: Histogram<UInt64>)]
        var failure: String?
        var commandLine: String
    }

    /// `onProgress(seconds, tps, latencyMs)` for each of pgbench's progress lines.
    func run(
        spec: ConnectionSpec, mode: QueryMode, clients: Int, duration: Int, warmup: Int, rate: Double, workDirectory: URL,
        onProgress: @escaping @Sendable (Double, Double, Double?) -> Void
    ) throws -> Outcome {
        try FileManager.default.createDirectory(at: workDirectory, withIntermediateDirectories: true)
        var environment = ProcessInfo.processInfo.environment
        if let password = spec.password { environment["PGPASSWORD"] = password }
        environment["PGSSLMODE"] = spec.sslmode ?? "disable"
        environment["PGAPPNAME"] = spec.applicationName ?? "tidegate-loadtest"
        let base = ["-n", "-S", "-M", mode.rawValue, "-c", String(clients), "-j", String(min(self.threads, clients)),
                    "-h", spec.host, "-p", String(spec.port), "-U", spec.user]
        let rateArguments = rate > 0 ? ["-R", String(format: "%.3f", rate)] : []
        if warmup > 0 {
            _ = try Self.execute(self.pgbench, base + ["-T", String(warmup), spec.database] + rateArguments, environment: environment, onLine: { _ in })
        }
        let prefix = workDirectory.appendingPathComponent("pgbench_log").path
        let arguments = base + ["-T", String(duration), "-P", "1", "-l", "--log-prefix", prefix] + rateArguments + [spec.database]
        let commandLine = ([self.pgbench] + arguments).joined(separator: " ")
        let started = Date().timeIntervalSince1970
        let result = try Self.execute(self.pgbench, arguments, environment: environment) { line in
            if let progress = PgbenchOutput.progress(line[...]) { onProgress(progress.seconds, progress.tps, progress.latencyMs) }
        }
        try (result.output + "\n" + result.errors).write(to: workDirectory.appendingPathComponent("pgbench.out"), atomically: true, encoding: .utf8)

        var figures = ClassFigures(kinds: 1)
        var seconds: [Int: (UInt64, UInt64, Histogram<UInt64>)] = [:]
        let logs = (try? FileManager.default.contentsOfDirectory(atPath: workDirectory.path))?.filter { $0.hasPrefix("pgbench_log.") } ?? []
        var firstEnd = Int64.max
        var transactions: [PgbenchOutput.Transaction] = []
        for log in logs {
            let path = workDirectory.appendingPathComponent(log)
            guard let text = try? String(contentsOf: path, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") {
                guard let transaction = PgbenchOutput.transaction(line) else { continue }
                transactions.append(transaction)
                if let latency = transaction.latency { firstEnd = min(firstEnd, transaction.end - Int64(latency)) }
            }
            try? FileManager.default.removeItem(at: path)
        }
        let origin = firstEnd == Int64.max ? Int64(started * 1e6) : firstEnd
        for transaction in transactions where !transaction.skipped {
            let second = Int((transaction.end - origin) / 1_000_000) + 1
            var entry = seconds[second] ?? (0, 0, latencyHistogram())
            figures.transactions += 1
            entry.0 += 1
            if let latency = transaction.latency {
                _ = figures.histogram.record(max(1, latency))
                _ = figures.kinds[0].record(max(1, latency))
                _ = entry.2.record(max(1, latency))
            } else {
                figures.errors["pgbench-failed", default: 0] += 1
                figures.kindErrors[0] += 1
                entry.1 += 1
            }
            seconds[second] = entry
        }
        let messages = PgbenchOutput.errors(result.errors + "\n" + result.output)
        for message in messages {
            // pgbench prints the server's message but not its SQLSTATE; an aborted client stops.
            figures.errors["pgbench", default: 0] += 1
            if figures.messages["pgbench"] == nil { figures.messages["pgbench"] = message }
        }
        var failure: String?
        if result.status != 0 && figures.transactions == 0 {
            failure = "pgbench exited with status \(result.status): \(messages.first ?? result.errors.split(separator: "\n").last.map(String.init) ?? "no output")"
        }
        let timeline = seconds.keys.sorted().filter { $0 >= 1 && $0 <= duration }.map { key in
            let entry = seconds[key]!
            return (second: key, transactions: entry.0, errors: entry.1, histogram: entry.2)
        }
        // pgbench's own rate leaves out the time its clients took to connect: the measured seconds are
        // those of that rate.
        var measured = Double(duration)
        if let tps = PgbenchOutput.tps(result.output), tps > 0, figures.transactions > 0 { measured = Double(figures.transactions) / tps }
        return Outcome(figures: figures, seconds: measured, timeline: timeline, failure: failure, commandLine: commandLine)
    }

    struct Execution {
        var status: Int32
        var output: String
        var errors: String
    }

    /// Runs a program; `onLine` gets each line of its standard error as it comes (pgbench's progress).
    /// Spawned with an empty signal mask and default handlers: the threads of this process block
    /// signals, a child inherits that mask, and pgbench ends a `-T` run on SIGALRM.
    static func execute(_ program: String, _ arguments: [String], environment: [String: String], onLine: @escaping @Sendable (String) -> Void) throws -> Execution {
        var outputPipe: [Int32] = [0, 0]
        var errorPipe: [Int32] = [0, 0]
        guard pipe(&outputPipe) == 0, pipe(&errorPipe) == 0 else { throw UsageFailure(description: "pipe(): \(String(cString: strerror(errno)))") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outputPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errorPipe[1], 2)
        for descriptor in outputPipe + errorPipe { posix_spawn_file_actions_addclose(&actions, descriptor) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGALRM, SIGINT, SIGTERM, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid = pid_t()
        let status = posix_spawn(&pid, program, &actions, &attributes, argv, envp)
        close(outputPipe[1])
        close(errorPipe[1])
        guard status == 0 else {
            close(outputPipe[0])
            close(errorPipe[0])
            throw UsageFailure(description: "cannot run \(program): \(String(cString: strerror(status)))")
        }
        let collected = ErrorCollector(onLine: onLine)
        let errorHandle = FileHandle(fileDescriptor: errorPipe[0], closeOnDealloc: true)
        let reader = Thread {
            while true {
                let data = errorHandle.availableData
                if data.isEmpty { break }
                collected.append(data)
            }
        }
        reader.start()
        let output = FileHandle(fileDescriptor: outputPipe[0], closeOnDealloc: true).readDataToEndOfFile()
        var exit: Int32 = 0
        while waitpid(pid, &exit, 0) < 0 && errno == EINTR {}
        while !reader.isFinished { usleep(1000) }
        let code: Int32 = (exit & 0x7f) == 0 ? (exit >> 8) & 0xff : 128 + (exit & 0x7f)
        return Execution(status: code, output: String(decoding: output, as: UTF8.self), errors: collected.text)
    }

    /// Locates a program on PATH (and in PostgreSQL's Debian directory).
    static func find(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let directories = path.split(separator: ":").map(String.init) + ["/usr/lib/postgresql/15/bin"]
        return directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}

private final class ErrorCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private var pending = Data()
    private let onLine: @Sendable (String) -> Void

    init(onLine: @escaping @Sendable (String) -> Void) { self.onLine = onLine }

    func append(_ chunk: Data) {
        self.lock.lock()
        self.data.append(chunk)
        self.pending.append(chunk)
        var lines: [String] = []
        while let newline = self.pending.firstIndex(of: UInt8(ascii: "\n")) {
            lines.append(String(decoding: self.pending[self.pending.startIndex..<newline], as: UTF8.self))
            self.pending = Data(self.pending[self.pending.index(after: newline)...])
        }
        self.lock.unlock()
        for line in lines { self.onLine(line) }
    }

    var text: String {
        self.lock.lock()
        defer { self.lock.unlock() }
        return String(decoding: self.data, as: UTF8.self)
    }
}
