import Cache
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import TidegateServer

/// The lab Redis (scripts/lab up). Other engineers' tests share it: keys carry a per-run prefix and
/// nothing is flushed.
enum RedisLab {
    static let host = "127.0.0.1"
    /// 16379, or TIDEGATE_LAB_REDIS_PORT (as `scripts/lab env` exports it).
    static let port = ProcessInfo.processInfo.environment["TIDEGATE_LAB_REDIS_PORT"].flatMap { Int($0) } ?? 16379
    static let skipReason = Comment(rawValue: "lab Redis on \(host):\(port) is not reachable: run scripts/lab up")
    static let serverPath = "/usr/bin/redis-server"
    static let noServerReason = Comment(
        rawValue: "redis-server is not installed at \(serverPath): run scripts/install-deps")

    static func settings(port: Int = RedisLab.port) -> RedisClient.Settings {
        // Generous timeouts: a debug build on a busy 2-core machine; the timeout tests set their own.
        RedisClient.Settings(port: port, connections: 2, connectTimeoutMs: 2_000, commandTimeoutMs: 5_000)
    }
}

/// True when something accepts TCP connections on `port`.
func tcpPortAccepts(_ port: Int, host: String = "127.0.0.1") -> Bool {
    do {
        let channel = try ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(1))
            .connect(host: host, port: port).wait()
        try? channel.close().wait()
        return true
    } catch {
        return false
    }
}

func redisLabIsUp() -> Bool { tcpPortAccepts(RedisLab.port) }

/// A port nothing listens on right now: bound to port 0, then closed.
func freeTCPPort() throws -> Int {
    let channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .bind(host: "127.0.0.1", port: 0).wait()
    defer { try? channel.close().wait() }
    guard let port = channel.localAddress?.port else { throw TestTimeout(what: "no local port") }
    return port
}

/// A redis-server of the test's own on a free port, to kill and restart (never the lab's).
final class PrivateRedis {
    let port: Int
    let directory: URL
    let extraArguments: [String]
    private var process: Process?

    init(extraArguments: [String] = []) throws {
        self.port = try freeTCPPort()
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("tidegate-redis-\(UUID())")
        self.extraArguments = extraArguments
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
    }

    /// Starts the server and waits (at most 10 s) until it accepts connections.
    func start() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: RedisLab.serverPath)
        process.arguments =
            [
                "--port", "\(self.port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.directory.path, "--logfile", self.directory.appendingPathComponent("redis.log").path,
                "--daemonize", "no", "--enable-debug-command", "local",
            ] + self.extraArguments
        try process.run()
        self.process = process
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if tcpPortAccepts(self.port) { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestTimeout(what: "redis-server on port \(self.port) did not start")
    }

    /// SIGKILL: the connections die with it, as when the host fails.
    func crash() {
        guard let process = self.process else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    deinit {
        self.crash()
        try? FileManager.default.removeItem(at: self.directory)
    }
}

/// Every `onAvailabilityChange` call, in order.
final class AvailabilityLog: Sendable {
    private let box = NIOLockedValueBox<[Bool]>([])

    var changes: [Bool] { self.box.withLockedValue { $0 } }

    func record(_ available: Bool) { self.box.withLockedValue { $0.append(available) } }

    /// Waits until `count` changes were recorded; false when `limit` passes first.
    func wait(forCount count: Int, within limit: Duration = .seconds(10)) async throws -> Bool {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if self.changes.count >= count { return true }
            try await Task.sleep(for: .milliseconds(5))
        }
        return false
    }
}

/// Makes a client and waits until it is available (at most 10 s).
func availableClient(
    _ settings: RedisClient.Settings, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
    log: AvailabilityLog = AvailabilityLog()
) async throws -> RedisClient {
    let client = RedisClient(
        settings: settings, group: group, logger: Lab.quietLogger, onAvailabilityChange: log.record)
    let deadline = ContinuousClock.now + .seconds(10)
    while !client.isAvailable {
        guard ContinuousClock.now < deadline else {
            try await client.shutdown().get()
            throw TestTimeout(what: "Redis client for port \(settings.port) never became available")
        }
        try await Task.sleep(for: .milliseconds(5))
    }
    return client
}

func redisFailure(_ body: () async throws -> Void) async -> RedisClientError? {
    do {
        try await body()
        return nil
    } catch let error as RedisClientError {
        return error
    } catch {
        return RedisClientError(.connectionClosed, "unexpected error \(error)")
    }
}

@Suite(.enabled(if: redisLabIsUp(), RedisLab.skipReason), .timeLimit(.minutes(1)))
struct RedisClientLabTests {
    let prefix = "tidegate-test:\(UUID().uuidString):"
    var loop: any EventLoop { MultiThreadedEventLoopGroup.singleton.next() }

    @Test func repliesOfEveryKind() async throws {
        let client = try await availableClient(RedisLab.settings())
        let key = self.prefix + "kinds"
        let binary = ByteBuffer(bytes: [0, 13, 10, 36, 42, 255])
        let big = ByteBuffer(repeating: 0x61, count: 1 << 20)
        let replies = try await client.pipeline(
            [
                RedisCommand("PING"),
                RedisCommand("SET", key, binary, "PX", 60_000),
                RedisCommand("GET", key),
                RedisCommand("GET", self.prefix + "missing"),
                RedisCommand("INCR", key),
                RedisCommand("NO-SUCH-COMMAND"),
                RedisCommand("RPUSH", key + ":list", "a", "b", "c"),
                RedisCommand("LRANGE", key + ":list", 0, -1),
                RedisCommand("SET", key + ":big", big),
                RedisCommand("GET", key + ":big"),
                RedisCommand("BLPOP", self.prefix + "empty-list", "0.01"),
                RedisCommand("DEL", key, key + ":list", key + ":big"),
            ], on: self.loop
        ).get()
        #expect(replies.count == 12)
        #expect(replies[0] == .simpleString("PONG"))
        #expect(replies[1] == .simpleString("OK"))
        #expect(replies[2] == .bulkString(binary))
        #expect(replies[3] == .bulkString(nil))
        #expect(replies[4].errorMessage?.hasPrefix("ERR value is not an integer") == true)
        #expect(replies[5].errorMessage?.hasPrefix("ERR unknown command") == true)
        #expect(replies[6] == .integer(3))
        #expect(replies[7] == .array(["a", "b", "c"].map { .bulkString(ByteBuffer(string: $0)) }))
        #expect(replies[9] == .bulkString(big))
        #expect(replies[10] == .array(nil))
        #expect(replies[11] == .integer(3))
        // Nested arrays: COMMAND INFO answers one array per command, with arrays inside.
        let info = try await client.send(RedisCommand("COMMAND", "INFO", "get"), on: self.loop).get()
        guard case .array(let commands?) = info, case .array(let fields?) = commands.first else {
            Issue.record("COMMAND INFO gave \(info)")
            return
        }
        #expect(fields.first?.string == "get")
        let counters = client.counters
        #expect(counters.commandsSent >= 13 && counters.replies >= 13)
        #expect(counters.errors == 2)
        #expect(counters.timeouts == 0)
        try await client.shutdown().get()
    }

    @Test func futuresCompleteOnTheCallersLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 3)
        let client = try await availableClient(RedisLab.settings(), group: group)
        for loop in group.makeIterator() {
            let onLoop = try await client.send(RedisCommand("PING"), on: loop).map { _ in loop.inEventLoop }.get()
            #expect(onLoop)
        }
        try await client.shutdown().get()
        try await group.shutdownGracefully()
    }

    @Test func selectsTheConfiguredDatabase() async throws {
        var settings = RedisLab.settings()
        settings.database = 3
        let inThree = try await availableClient(settings)
        let inZero = try await availableClient(RedisLab.settings())
        let key = self.prefix + "db"
        _ = try await inThree.send(RedisCommand("SET", key, "three", "PX", 60_000), on: self.loop).get()
        #expect(try await inThree.send(RedisCommand("GET", key), on: self.loop).get().string == "three")
        #expect(try await inZero.send(RedisCommand("GET", key), on: self.loop).get() == .bulkString(nil))
        _ = try await inThree.send(RedisCommand("DEL", key), on: self.loop).get()
        try await inThree.shutdown().get()
        try await inZero.shutdown().get()
    }

    /// 10,000 INCRs on one key per loop, pipelined from four loops at once, plus 10,000 SET/GET pairs of
    /// distinct values in concurrent pipelines: every reply is the one its command asked for.
    @Test func pipelinedCommandsKeepTheirOrder() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 4)
        var settings = RedisLab.settings()
        settings.connections = 4
        let client = try await availableClient(settings, group: group)
        let loops = Array(group.makeIterator())
        let perLoop = 2_500
        let counters = loops.indices.map { self.prefix + "counter:\($0)" }
        let incrs = loops.indices.map { index in
            client.pipeline(Array(repeating: RedisCommand("INCR", counters[index]), count: perLoop), on: loops[index])
        }
        let pairs = (0..<40).map { batch in
            let commands = (0..<125).flatMap { item -> [RedisCommand] in
                let key = self.prefix + "pair:\(batch):\(item)"
                return [RedisCommand("SET", key, "value \(batch) \(item)", "PX", 60_000), RedisCommand("GET", key)]
            }
            return (batch, client.pipeline(commands, on: loops[batch % loops.count]))
        }
        for (index, future) in incrs.enumerated() {
            let replies = try await future.get()
            #expect(replies == (1...perLoop).map { .integer(Int64($0)) }, "counter \(index)")
        }
        for (batch, future) in pairs {
            let replies = try await future.get()
            #expect(replies.count == 250)
            for item in 0..<125 {
                #expect(replies[2 * item] == .simpleString("OK"))
                #expect(replies[2 * item + 1].string == "value \(batch) \(item)")
            }
        }
        _ = try await client.pipeline(counters.map { RedisCommand("DEL", $0) }, on: loops[0]).get()
        #expect(client.counters.commandsSent >= 20_000)
        try await client.shutdown().get()
        try await group.shutdownGracefully()
    }

    @Test func shutdownStopsEverything() async throws {
        let log = AvailabilityLog()
        let client = try await availableClient(RedisLab.settings(), log: log)
        try await client.shutdown().get()
        #expect(!client.isAvailable)
        #expect(log.changes == [true, false])
        let error = await redisFailure { _ = try await client.send(RedisCommand("PING"), on: self.loop).get() }
        #expect(error?.code == .shutdown)
        // A second shutdown has nothing left to do.
        try await client.shutdown().get()
    }
}

@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: RedisLab.serverPath), RedisLab.noServerReason),
    .timeLimit(.minutes(1)))
struct RedisClientFaultTests {
    var loop: any EventLoop { MultiThreadedEventLoopGroup.singleton.next() }

    /// Redis killed: commands fail at once with `.unavailable`; Redis back: the client reconnects by itself.
    @Test func failsFastWhileDownAndComesBack() async throws {
        let redis = try PrivateRedis()
        try await redis.start()
        let log = AvailabilityLog()
        var settings = RedisLab.settings(port: redis.port)
        settings.backoffMinMs = 20
        settings.backoffMaxMs = 200
        let client = try await availableClient(settings, log: log)
        #expect(try await client.send(RedisCommand("SET", "k", "v"), on: self.loop).get() == .simpleString("OK"))

        redis.crash()
        #expect(try await log.wait(forCount: 2), "the client never noticed Redis went away")
        #expect(!client.isAvailable)
        for _ in 0..<50 {
            let started = ContinuousClock.now
            let error = await redisFailure { _ = try await client.send(RedisCommand("GET", "k"), on: self.loop).get() }
            let elapsed = ContinuousClock.now - started
            #expect(error == RedisClientError.unavailable)
            #expect(elapsed < .milliseconds(100), "a command while Redis is down took \(elapsed)")
        }
        // Let a few reconnects fail (backoff grows to its maximum) before Redis returns.
        try await Task.sleep(for: .milliseconds(300))
        #expect(!client.isAvailable)

        try await redis.start()
        #expect(try await log.wait(forCount: 3), "the client did not reconnect after Redis returned")
        #expect(log.changes == [true, false, true])
        #expect(try await client.send(RedisCommand("PING"), on: self.loop).get() == .simpleString("PONG"))
        let counters = client.counters
        #expect(counters.rejected >= 50)
        #expect(counters.connects >= 3)
        #expect(counters.disconnects >= 2)
        try await client.shutdown().get()
        #expect(log.changes == [true, false, true, false])
    }

    @Test func startsUnavailableWhenRedisIsDown() async throws {
        let redis = try PrivateRedis()
        let log = AvailabilityLog()
        var settings = RedisLab.settings(port: redis.port)
        settings.backoffMinMs = 20
        settings.backoffMaxMs = 100
        let client = RedisClient(
            settings: settings, group: MultiThreadedEventLoopGroup.singleton, logger: Lab.quietLogger,
            onAvailabilityChange: log.record)
        #expect(!client.isAvailable)
        let error = await redisFailure { _ = try await client.send(RedisCommand("PING"), on: self.loop).get() }
        #expect(error == RedisClientError.unavailable)
        try await redis.start()
        #expect(try await log.wait(forCount: 1), "the client did not connect once Redis started")
        #expect(try await client.send(RedisCommand("PING"), on: self.loop).get() == .simpleString("PONG"))
        try await client.shutdown().get()
    }

    /// A Redis that stalls (DEBUG SLEEP) makes a command with a 50 ms timeout fail with `.timeout`; the
    /// connection closes and the client is back once Redis answers again.
    @Test func slowRedisTimesOutAndRecovers() async throws {
        let redis = try PrivateRedis()
        try await redis.start()
        var settings = RedisLab.settings(port: redis.port)
        settings.connections = 1
        settings.commandTimeoutMs = 50
        settings.backoffMinMs = 20
        settings.backoffMaxMs = 100
        let client = try await availableClient(settings)
        let helper = try await availableClient(RedisLab.settings(port: redis.port))
        let sleep = helper.send(RedisCommand("DEBUG", "SLEEP", "0.3"), on: self.loop)
        try await Task.sleep(for: .milliseconds(30))

        let started = ContinuousClock.now
        let error = await redisFailure {
            _ = try await client.pipeline([RedisCommand("PING"), RedisCommand("PING")], on: self.loop).get()
        }
        let elapsed = ContinuousClock.now - started
        #expect(error?.code == .timeout)
        #expect(elapsed < .milliseconds(250), "the timeout took \(elapsed)")
        #expect(client.counters.timeouts == 2)

        #expect(try await sleep.get() == .simpleString("OK"))
        let deadline = ContinuousClock.now + .seconds(5)
        var answer: RedisValue?
        while answer == nil, ContinuousClock.now < deadline {
            answer = try? await client.send(RedisCommand("PING"), on: self.loop).get()
            if answer == nil { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(answer == .simpleString("PONG"), "the client did not recover after the stall")
        try await client.shutdown().get()
        try await helper.shutdown().get()
    }

    @Test func authenticatesWithThePassword() async throws {
        let redis = try PrivateRedis(extraArguments: ["--requirepass", "s3cret"])
        try await redis.start()
        var settings = RedisLab.settings(port: redis.port)
        settings.password = "s3cret"
        settings.database = 1
        let client = try await availableClient(settings)
        #expect(try await client.send(RedisCommand("SET", "k", "v"), on: self.loop).get() == .simpleString("OK"))
        let info = try await client.send(RedisCommand("CLIENT", "INFO"), on: self.loop).get()
        #expect(info.string?.contains("db=1") == true)

        // A wrong password never makes a connection usable: the client stays unavailable.
        settings.password = "wrong"
        let refused = RedisClient(
            settings: settings, group: MultiThreadedEventLoopGroup.singleton, logger: Lab.quietLogger)
        try await Task.sleep(for: .milliseconds(300))
        #expect(!refused.isAvailable)
        let error = await redisFailure { _ = try await refused.send(RedisCommand("PING"), on: self.loop).get() }
        #expect(error == RedisClientError.unavailable)
        try await refused.shutdown().get()
        try await client.shutdown().get()
    }
}
