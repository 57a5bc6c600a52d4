import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PostgresWire
import Prometheus
import ServiceLifecycle
import Testing

@testable import TidegateServer

/// Test support for tests that need the lab PostgreSQL (scripts/lab up): a reachability check for
/// `.enabled(if:)`, an in-process Tidegate, and a minimal simple-protocol client.
enum Lab {
    static let host = "127.0.0.1"
    /// 15432, or TIDEGATE_LAB_PRIMARY_PORT (as `scripts/lab env` exports it).
    static let primaryPort =
        ProcessInfo.processInfo.environment["TIDEGATE_LAB_PRIMARY_PORT"].flatMap { Int($0) } ?? 15432
    static let user = "tidegate"
    static let password = "tidegate"
    static let database = "market"
    static let skipReason = Comment(
        rawValue: "lab PostgreSQL on \(host):\(primaryPort) is not reachable: run scripts/lab up"
    )

    static let quietLogger = Logger(label: "tidegate-test", factory: { _ in SwiftLogNoOpLogHandler() })
}

/// True when something accepts TCP connections on the lab primary's port.
func labIsUp() -> Bool {
    do {
        let channel = try ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(2))
            .connect(host: Lab.host, port: Lab.primaryPort).wait()
        try? channel.close().wait()
        return true
    } catch {
        return false
    }
}

struct TestTimeout: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out: \(self.what)" }
}

/// Waits for `task` to finish, at most `limit`. Returns false on timeout (the task keeps running).
func waitForTask<Success: Sendable>(_ task: Task<Success, any Error>, within limit: Duration) async -> Bool {
    let finished = NIOLockedValueBox<CheckedContinuation<Bool, Never>?>(nil)
    return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
        finished.withLockedValue { $0 = continuation }
        Task {
            _ = await task.result
            finished.withLockedValue { $0.take() }?.resume(returning: true)
        }
        Task {
            try? await Task.sleep(for: limit)
            finished.withLockedValue { $0.take() }?.resume(returning: false)
        }
    }
}

/// Runs `body` with a deadline; throws TestTimeout when it is exceeded (the body is cancelled).
func withTimeout<T: Sendable>(
    _ limit: Duration,
    _ what: String,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw TestTimeout(what: what) }
        return value
    }
}

/// A Tidegate running in this process, in front of the lab primary, inside a ServiceGroup (as the
/// executable runs it) so that `stop()` can trigger a graceful shutdown.
struct TidegateUnderTest: Sendable {
    let service: TidegateService
    let group: ServiceGroup
    let task: Task<Void, any Error>
    let port: Int

    static func config() -> TidegateConfig {
        var config = TidegateConfig()
        config.listen.host = "127.0.0.1"
        config.listen.port = 0
        config.http.port = 0
        config.primary = .init(host: Lab.host, port: Lab.primaryPort)
        config.users = [Lab.user: .init(name: Lab.user, password: Lab.password, backendPassword: nil, admin: true)]
        config.shutdownTimeoutMs = 1_000
        return config
    }

    static func makeService(_ config: TidegateConfig) -> TidegateService {
        TidegateService(
            config: config,
            configPath: nil,
            overrides: [:],
            registry: PrometheusCollectorRegistry(),
            logger: Lab.quietLogger
        )
    }

    /// Polls until `service` is listening (at most 10 s).
    static func waitUntilListening(_ service: TidegateService, task: Task<Void, any Error>) async throws -> Int {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let port = service.localAddress?.port { return port }
            try await Task.sleep(for: .milliseconds(20))
        }
        task.cancel()
        throw TestTimeout(what: "Tidegate did not start listening")
    }

    static func start(_ config: TidegateConfig = Self.config()) async throws -> TidegateUnderTest {
        let service = Self.makeService(config)
        let group = ServiceGroup(services: [service], logger: Lab.quietLogger)
        let task = Task { try await group.run() }
        let port = try await Self.waitUntilListening(service, task: task)
        return TidegateUnderTest(service: service, group: group, task: task, port: port)
    }

    /// Triggers graceful shutdown and waits (bounded) for the service to return.
    func stop(within limit: Duration = .seconds(10)) async -> Bool {
        await self.group.triggerGracefulShutdown()
        return await waitForTask(self.task, within: limit)
    }
}

/// A minimal client speaking the simple query protocol (PostgresNIO only uses the extended protocol).
enum RawClient {
    struct ServerError: Error, CustomStringConvertible {
        var fields: ErrorFields
        var description: String { "\(self.fields.sqlState ?? "?"): \(self.fields.message ?? "?")" }
    }

    /// Logs in, runs `sql` with a Query message and returns every frame up to and including ReadyForQuery.
    static func simpleQuery(
        port: Int,
        user: String = Lab.user,
        password: String = Lab.password,
        database: String,
        sql: String,
        startupParameters: [(String, String)] = []
    ) async throws -> [PostgresFrame] {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(PostgresFrameDecoder(maxMessageBytes: 1 << 24))
                    )
                    return try NIOAsyncChannel<PostgresFrame, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var frames = inbound.makeAsyncIterator()
            var buffer = ByteBuffer()
            FrontendEncoder.startup(&buffer, parameters: [("user", user), ("database", database)] + startupParameters)
            try await outbound.write(buffer)
            var scram: SCRAMClientExchange?
            login: while let frame = try await frames.next() {
                buffer.clear()
                switch frame.backendID {
                case .authentication:
                    switch try BackendMessage.authentication(frame) {
                    case .ok:
                        continue login
                    case .sasl:
                        var exchange = SCRAMClientExchange(password: password)
                        FrontendEncoder.saslInitialResponse(
                            &buffer,
                            mechanism: "SCRAM-SHA-256",
                            data: exchange.clientFirstMessage()
                        )
                        scram = exchange
                    case .saslContinue(let data):
                        FrontendEncoder.saslResponse(&buffer, data: try scram!.receiveServerFirst(data))
                    case .saslFinal(let data):
                        try scram!.receiveServerFinal(data)
                        continue login
                    case .md5Password(let salt):
                        FrontendEncoder.password(
                            &buffer,
                            MD5Password.response(user: user, password: password, salt: salt)
                        )
                    case .cleartextPassword:
                        FrontendEncoder.password(&buffer, password)
                    case .unsupported(let code):
                        throw ServerError(
                            fields: ErrorFields(severity: "FATAL", sqlState: "?", message: "auth \(code)")
                        )
                    }
                    try await outbound.write(buffer)
                case .errorResponse:
                    throw ServerError(fields: try BackendMessage.errorFields(frame))
                case .readyForQuery:
                    break login
                default:
                    continue login
                }
            }
            buffer.clear()
            FrontendEncoder.query(&buffer, sql)
            try await outbound.write(buffer)
            var reply: [PostgresFrame] = []
            while let frame = try await frames.next() {
                reply.append(frame)
                if frame.backendID == .readyForQuery { break }
            }
            buffer.clear()
            FrontendEncoder.terminate(&buffer)
            try? await outbound.write(buffer)
            return reply
        }
    }

    /// The text values of the DataRows in `frames`.
    static func rows(_ frames: [PostgresFrame]) -> [[String?]] {
        frames.filter { $0.backendID == .dataRow }.map { frame in
            var body = frame.body
            let count = Int(body.readInteger(as: Int16.self) ?? 0)
            return (0..<count).map { _ in
                guard let length = body.readInteger(as: Int32.self), length >= 0 else { return nil }
                return body.readString(length: Int(length))
            }
        }
    }

    /// The column names of the first RowDescription in `frames`.
    static func columns(_ frames: [PostgresFrame]) -> [String] {
        guard var body = frames.first(where: { $0.backendID == .rowDescription })?.body,
            let count = body.readInteger(as: Int16.self)
        else { return [] }
        return (0..<Int(count)).compactMap { _ in
            let name = body.readNullTerminatedString()
            body.moveReaderIndex(forwardBy: 18)
            return name
        }
    }
}
