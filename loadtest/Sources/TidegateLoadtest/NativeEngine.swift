import Foundation
import Histogram
import LoadtestCore
import NIOCore
import NIOPosix
import PostgresWire

/// How statements go on the wire, as pgbench's `-M`.
enum QueryMode: String, CaseIterable, Sendable {
    /// Query with the values as literals.
    case simple
    /// Parse (unnamed) Bind Describe Execute Sync, as libpq's PQexecParams.
    case extended
    /// Parse once per connection, then Bind Describe Execute Sync, as PQexecPrepared.
    case prepared
}

/// One class of clients in a run (`reads`, `writes`…).
struct ClientClass: Sendable {
    var name: String
    var clients: Int
    /// Statements per second over all clients of the class; 0 = closed loop (each client sends its next
    /// statement when the last one is answered).
    var rate: Double
    var mode: QueryMode
    var kinds: [StatementKind]
    var makeWorkload: @Sendable (_ client: Int) -> any Workload
}

func latencyHistogram() -> Histogram<UInt64> {
    var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
    histogram.autoResize = true
    return histogram
}

/// What one second (or a whole run) of one class produced.
struct ClassFigures: Sendable {
    var transactions: UInt64 = 0
    var histogram = latencyHistogram()
    var kinds: [Histogram<UInt64>]
    var kindErrors: [UInt64]
    var errors: [String: UInt64] = [:]
    var messages: [String: String] = [:]

    init(kinds: Int) {
        self.kinds = (0..<kinds).map { _ in latencyHistogram() }
        self.kindErrors = Array(repeating: 0, count: kinds)
    }

    mutating func add(_ other: ClassFigures) {
        self.transactions += other.transactions
        self.histogram.add(other.histogram)
        for index in self.kinds.indices where index < other.kinds.count {
            self.kinds[index].add(other.kinds[index])
            self.kindErrors[index] += other.kindErrors[index]
        }
        for (code, count) in other.errors { self.errors[code, default: 0] += count }
        for (code, message) in other.messages where self.messages[code] == nil { self.messages[code] = message }
    }

    var errorCount: UInt64 { self.errors.values.reduce(0, +) }
}

/// The figures of the clients of one event loop; touched only on that loop.
final class LoopRecorder: @unchecked Sendable {
    var measuring = false
    private(set) var total: [ClassFigures]
    private var interval: [ClassFigures]
    private let kindCounts: [Int]

    init(kindCounts: [Int]) {
        self.kindCounts = kindCounts
        self.total = kindCounts.map { ClassFigures(kinds: $0) }
        self.interval = kindCounts.map { _ in ClassFigures(kinds: 0) }
    }

    /// A statement's outcome, counted while measuring; a lost connection is counted even in the
    /// warm-up, since its client sends nothing more and the run must say so.
    func record(classIndex: Int, kind: Int, latency: UInt64, error: (code: String, message: String)?, always: Bool = false) {
        guard self.measuring || always else { return }
        self.total[classIndex].transactions += 1
        self.interval[classIndex].transactions += 1
        if let error {
            self.total[classIndex].errors[error.code, default: 0] += 1
            self.interval[classIndex].errors[error.code, default: 0] += 1
            if self.total[classIndex].messages[error.code] == nil { self.total[classIndex].messages[error.code] = error.message }
            self.total[classIndex].kindErrors[kind] += 1
        } else {
            let value = max(1, latency)
            _ = self.total[classIndex].histogram.record(value)
            _ = self.total[classIndex].kinds[kind].record(value)
            _ = self.interval[classIndex].histogram.record(value)
        }
    }

    /// The figures since the last call.
    func takeInterval() -> [ClassFigures] {
        let taken = self.interval
        self.interval = self.kindCounts.map { _ in ClassFigures(kinds: 0) }
        return taken
    }
}

/// One client: sends its workload's statements on its connection until the run ends.
final class LoadClient: @unchecked Sendable {
    let connection: PGConnection
    var workload: any Workload
    let classIndex: Int
    let mode: QueryMode
    let recorder: LoopRecorder
    /// Nanoseconds between this client's statements (open loop); 0 = closed loop.
    let interval: Int64
    private var due: NIODeadline = .now()
    private var stopAt: NIODeadline = .distantFuture
    let finished: EventLoopPromise<Void>
    private var done = false
    private let statementNames: [String]

    init(connection: PGConnection, workload: any Workload, classIndex: Int, mode: QueryMode, recorder: LoopRecorder, interval: Int64) {
        self.connection = connection
        self.workload = workload
        self.classIndex = classIndex
        self.mode = mode
        self.recorder = recorder
        self.interval = interval
        self.finished = connection.eventLoop.makePromise()
        self.statementNames = workload.kinds.indices.map { "tidegate_loadtest_\($0)" }
    }

    /// Prepared mode: Parse every statement once; fails with the server's error (a missing table…).
    func prepare() -> EventLoopFuture<Void> {
        guard self.mode == .prepared else { return self.connection.eventLoop.makeSucceededVoidFuture() }
        var future = self.connection.eventLoop.makeSucceededVoidFuture()
        for (index, kind) in self.workload.kinds.enumerated() {
            future = future.flatMap {
                var buffer = self.connection.channel.allocator.buffer(capacity: kind.sql.utf8.count + 32)
                FrontendEncoder.parse(&buffer, name: self.statementNames[index], query: kind.sql, parameterTypes: [])
                FrontendEncoder.sync(&buffer)
                let promise = self.connection.eventLoop.makePromise(of: Void.self)
                self.connection.send(buffer) { result in
                    switch result {
                    case .success(let reply):
                        if let error = reply.error {
                            promise.fail(ConnectError(description: "preparing \(kind.name) failed: \(error.message ?? "") (SQLSTATE \(error.sqlState ?? "?"))", sqlState: error.sqlState))
                        } else {
                            promise.succeed(())
                        }
                    case .failure(let error): promise.fail(error)
                    }
                }
                return promise.futureResult
            }
        }
        return future
    }

    /// Starts at `start` (open loop: plus this client's phase) and stops sending at `stop`.
    func run(start: NIODeadline, phase: Int64, stop: NIODeadline) {
        self.connection.eventLoop.execute {
            self.stopAt = stop
            self.due = start + .nanoseconds(phase)
            self.connection.eventLoop.scheduleTask(deadline: self.due) { self.issue() }
        }
    }

    private func issue() {
        let now = NIODeadline.now()
        guard now < self.stopAt else {
            self.finish()
            return
        }
        if self.interval > 0, self.due > now {
            self.connection.eventLoop.scheduleTask(deadline: self.due) { self.issue() }
            return
        }
        let statement = self.workload.next()
        let begin = self.interval > 0 ? self.due : now
        let request = self.encode(statement)
        let kind = statement.kind
        self.connection.send(request) { result in
            let end = NIODeadline.now()
            let latency = UInt64(max(0, (end - begin).nanoseconds / 1000))
            switch result {
            case .success(let reply):
                let error = reply.error.map { (code: $0.sqlState ?? "?????", message: $0.message ?? "") }
                self.recorder.record(classIndex: self.classIndex, kind: kind, latency: latency, error: error)
                if self.interval > 0 { self.due = self.due + .nanoseconds(self.interval) }
                self.issue()
            case .failure(let error):
                self.recorder.record(
                    classIndex: self.classIndex, kind: kind, latency: latency, error: (code: error.sqlState ?? "08006", message: error.description),
                    always: true)
                self.finish()
            }
        }
    }

    private func finish() {
        guard !self.done else { return }
        self.done = true
        self.finished.succeed(())
    }

    private func encode(_ statement: NextStatement) -> ByteBuffer {
        let kind = self.workload.kinds[statement.kind]
        var buffer = self.connection.channel.allocator.buffer(capacity: kind.sql.utf8.count + 64)
        switch self.mode {
        case .simple:
            FrontendEncoder.query(&buffer, kind.literalSQL(statement.parameters))
            return buffer
        case .extended:
            FrontendEncoder.parse(&buffer, name: "", query: kind.sql, parameterTypes: [])
            Self.bindExecute(&buffer, statement: "", values: statement.parameters)
        case .prepared:
            Self.bindExecute(&buffer, statement: self.statementNames[statement.kind], values: statement.parameters)
        }
        return buffer
    }

    static func bindExecute(_ buffer: inout ByteBuffer, statement: String, values: [String?]) {
        FrontendEncoder.bind(
            &buffer, portal: "", statement: statement, parameterFormats: [], values: values.map { $0.map { ByteBuffer(string: $0) } },
            resultFormats: [])
        FrontendEncoder.describe(&buffer, kind: UInt8(ascii: "P"), name: "")
        FrontendEncoder.execute(&buffer, portal: "")
        FrontendEncoder.sync(&buffer)
    }
}

/// The tool's own engine: NIO connections, one request in flight per client.
struct NativeEngine {
    let group: any EventLoopGroup

    struct Outcome {
        var classes: [ClassFigures]
        var seconds: Double
        var failure: String?
    }

    /// Connects every client, warms up for `warmup` seconds, measures for `duration` seconds and calls
    /// `tick` once a second with that second's figures per class.
    func run(
        spec: ConnectionSpec, classes: [ClientClass], warmup: Double, duration: Double,
        tick: @escaping @Sendable (_ second: Int, _ figures: [ClassFigures]) async -> Void
    ) async throws -> Outcome {
        let loops = Array(self.group.makeIterator())
        let recorders = loops.map { _ in LoopRecorder(kindCounts: classes.map(\.kinds.count)) }
        var clients: [LoadClient] = []
        var index = 0
        defer { for client in clients { client.connection.close() } }
        for (classIndex, clientClass) in classes.enumerated() {
            let interval: Int64 = clientClass.rate > 0 ? Int64(Double(clientClass.clients) / clientClass.rate * 1e9) : 0
            // Connect in groups so a few hundred clients do not storm the server's accept queue.
            var pending: [EventLoopFuture<LoadClient>] = []
            for client in 0..<clientClass.clients {
                let loopIndex = index % loops.count
                index += 1
                let loop = loops[loopIndex]
                let recorder = recorders[loopIndex]
                let workload = clientClass.makeWorkload(client)
                pending.append(
                    PGConnection.connect(spec, on: loop).flatMap { connection in
                        let loadClient = LoadClient(
                            connection: connection, workload: workload, classIndex: classIndex, mode: clientClass.mode, recorder: recorder,
                            interval: interval)
                        return loadClient.prepare().map { loadClient }.flatMapErrorThrowing { error in
                            connection.close()
                            throw error
                        }
                    })
                if pending.count == 32 || client == clientClass.clients - 1 {
                    for future in pending {
                        do {
                            clients.append(try await future.get())
                        } catch {
                            for rest in pending { rest.whenSuccess { $0.connection.close() } }
                            throw error
                        }
                    }
                    pending.removeAll()
                }
            }
        }
        let start = NIODeadline.now() + .milliseconds(100)
        let measureFrom = start + .nanoseconds(Int64(warmup * 1e9))
        let stop = measureFrom + .nanoseconds(Int64(duration * 1e9))
        for client in clients {
            let phase = client.interval > 0 ? Int64.random(in: 0..<max(1, client.interval)) : 0
            client.run(start: start, phase: phase, stop: stop)
        }
        try await Self.sleep(until: measureFrom)
        for (loop, recorder) in zip(loops, recorders) {
            try await loop.submit {
                _ = recorder.takeInterval()
                recorder.measuring = true
            }.get()
        }
        let measured = NIODeadline.now()
        var second = 0
        while true {
            second += 1
            let next = measured + .seconds(Int64(second))
            if next > stop + .milliseconds(5) { break }
            try await Self.sleep(until: next)
            var figures = classes.map { ClassFigures(kinds: $0.kinds.count) }
            for (loop, recorder) in zip(loops, recorders) {
                let taken = try await loop.submit { recorder.takeInterval() }.get()
                for (index, part) in taken.enumerated() { figures[index].add(part) }
            }
            await tick(second, figures)
        }
        // Wait for the statements still in flight (their figures count: they were sent in time).
        let allFinished = EventLoopFuture.andAllComplete(clients.map { $0.finished.futureResult }, on: loops[0])
        let settled = loops[0].makePromise(of: Void.self)
        allFinished.whenComplete { _ in settled.succeed(()) }
        let limit = loops[0].scheduleTask(in: .seconds(60)) { settled.succeed(()) }
        try? await settled.futureResult.get()
        limit.cancel()
        var totals = classes.map { ClassFigures(kinds: $0.kinds.count) }
        for (loop, recorder) in zip(loops, recorders) {
            let part = try await loop.submit {
                recorder.measuring = false
                return recorder.total
            }.get()
            for (index, figures) in part.enumerated() { totals[index].add(figures) }
        }
        return Outcome(classes: totals, seconds: duration, failure: nil)
    }

    static func sleep(until deadline: NIODeadline) async throws {
        let wait = (deadline - NIODeadline.now()).nanoseconds
        if wait > 0 { try await Task.sleep(nanoseconds: UInt64(wait)) }
    }
}
