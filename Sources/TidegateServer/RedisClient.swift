import Cache
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The cache tier's connection to Redis: a fixed number of connections spread over an event loop group,
/// each pipelining the commands handed to it. It never makes a caller wait for Redis to come back: with no
/// connection up (Redis down, connecting, or backing off) a command fails at once with `.unavailable`,
/// while every slot reconnects in the background with exponential backoff.
///
/// The client starts unavailable and connects at once. `onAvailabilityChange(true)` is called when the
/// first connection is up, `false` when the last one goes away (and at shutdown), always alternating and in
/// order, on the thread that made the change (an event loop, or the caller of `shutdown()`): it must not
/// block. The cache treats `true` as "Redis may hold anything": it invalidates everything before serving
/// hits again. Call `shutdown()` before dropping the client.
final class RedisClient: Sendable {
    struct Settings: Sendable, Equatable {
        var host = "127.0.0.1"
        var port = 6379
        /// Sent with AUTH on every connection when set.
        var password: String?
        /// SELECTed on every connection when not 0.
        var database = 0
        var connections = 4
        /// Bounds the TCP connect and the replies to AUTH and SELECT.
        var connectTimeoutMs = 500
        var commandTimeoutMs = 50
        var backoffMinMs = 100
        var backoffMaxMs = 5000
    }

    /// What the client did since it started (the admin view).
    struct Counters: Sendable, Equatable {
        var commandsSent = 0
        var replies = 0
        /// RESP error replies.
        var errors = 0
        var timeouts = 0
        var connects = 0
        var disconnects = 0
        /// Commands failed at once with `.unavailable` (or after shutdown).
        var rejected = 0
    }

    private struct Shared: Sendable {
        var machine: RedisClientStateMachine<RedisConnection>
        var shutdownWaiters: [EventLoopPromise<Void>] = []
    }

    let settings: Settings
    /// The event loop of each connection slot.
    private let loops: [any EventLoop]
    private let setup: [RedisCommand]
    private let logger: Logger
    private let onAvailabilityChange: @Sendable (Bool) -> Void
    private let counterBox = RedisCounters()
    private let shared: NIOLockedValueBox<Shared>

    /// Starts connecting `settings.connections` connections, spread over `group`'s loops.
    init(
        settings: Settings, group: any EventLoopGroup, logger: Logger,
        onAvailabilityChange: @escaping @Sendable (Bool) -> Void = { _ in }
    ) {
        precondition(settings.connections > 0, "a Redis client needs at least one connection")
        self.settings = settings
        self.loops = (0..<settings.connections).map { _ in group.next() }
        var setup: [RedisCommand] = []
        if let password = settings.password { setup.append(RedisCommand("AUTH", password)) }
        if settings.database != 0 { setup.append(RedisCommand("SELECT", settings.database)) }
        self.setup = setup
        var logger = logger
        logger[metadataKey: "tidegate.component"] = "redis"
        self.logger = logger
        self.onAvailabilityChange = onAvailabilityChange
        let machine = RedisClientStateMachine<RedisConnection>(loops: self.loops.map { ObjectIdentifier($0) })
        self.shared = NIOLockedValueBox(Shared(machine: machine))
        for slot in self.loops.indices { self.connect(slot: slot) }
    }

    /// Whether some connection is up.
    var isAvailable: Bool { self.shared.withLockedValue { $0.machine.isAvailable } }

    var counters: Counters {
        let box = self.counterBox
        return Counters(
            commandsSent: box.commandsSent.load(ordering: .relaxed), replies: box.replies.load(ordering: .relaxed),
            errors: box.errorReplies.load(ordering: .relaxed), timeouts: box.timeouts.load(ordering: .relaxed),
            connects: box.connects.load(ordering: .relaxed), disconnects: box.disconnects.load(ordering: .relaxed),
            rejected: box.rejected.load(ordering: .relaxed))
    }

    /// Sends every command on one connection in one write; the future, on `loop`, has one reply per command
    /// in order (RESP error replies as `.error` values). It fails with `.unavailable` at once when no
    /// connection is up, with `.timeout` when a reply is late, and when the connection fails.
    func pipeline(_ commands: [RedisCommand], on loop: any EventLoop) -> EventLoopFuture<[RedisValue]> {
        if commands.isEmpty { return loop.makeSucceededFuture([]) }
        let pick = self.shared.withLockedValue { $0.machine.pick(preferring: ObjectIdentifier(loop)) }
        switch pick {
        case .connection(let connection):
            if connection.loop.inEventLoop {
                return connection.send(commands).hop(to: loop)
            }
            return connection.loop.flatSubmit { connection.send(commands) }.hop(to: loop)
        case .unavailable:
            self.counterBox.rejected.add(commands.count, ordering: .relaxed)
            return loop.makeFailedFuture(RedisClientError.unavailable)
        case .shutDown:
            self.counterBox.rejected.add(commands.count, ordering: .relaxed)
            return loop.makeFailedFuture(RedisClientError.shutdown)
        }
    }

    /// One command; see `pipeline`.
    func send(_ command: RedisCommand, on loop: any EventLoop) -> EventLoopFuture<RedisValue> {
        self.pipeline([command], on: loop).map { $0[0] }
    }

    /// Closes every connection (failing what they still owe) and stops reconnecting. The future succeeds
    /// when every connection and every connect in flight has finished.
    func shutdown() -> EventLoopFuture<Void> {
        let promise = self.loops[0].makePromise(of: Void.self)
        let action = self.shared.withLockedValue { shared in
            let action = shared.machine.shutdown()
            if case .close(_, let completeNow, _) = action, !completeNow { shared.shutdownWaiters.append(promise) }
            return action
        }
        switch action {
        case .alreadyShutDown:
            promise.succeed(())
        case .close(let connections, let completeNow, let announce):
            if announce { self.announce() }
            for connection in connections {
                connection.loop.execute { connection.close(RedisClientError.shutdown) }
            }
            if completeNow { promise.succeed(()) }
        }
        return promise.futureResult
    }

    // MARK: Connection slots

    private func connect(slot: Int) {
        let loop = self.loops[slot]
        let connection = RedisConnection(
            loop: loop, setup: self.setup, setupTimeout: .milliseconds(Int64(self.settings.connectTimeoutMs)),
            commandTimeout: .milliseconds(Int64(self.settings.commandTimeoutMs)), counters: self.counterBox,
            logger: self.logger)
        ClientBootstrap(group: loop)
            .connectTimeout(.milliseconds(Int64(self.settings.connectTimeoutMs)))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(connection)
                }
            }
            .connect(host: self.settings.host, port: self.settings.port)
            .flatMap { channel in
                // On failure the handler has closed the channel already.
                connection.ready.map { channel }
            }
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    self.counterBox.connects.add(1, ordering: .relaxed)
                    self.logger.debug("Redis connection up", metadata: ["tidegate.redis.slot": "\(slot)"])
                    let action = self.shared.withLockedValue { $0.machine.connected(slot: slot, connection) }
                    switch action {
                    case .none: break
                    case .announce: self.announce()
                    case .close(let connection): connection.close(RedisClientError.shutdown)
                    }
                    channel.closeFuture.whenComplete { _ in self.disconnected(slot: slot, connection) }
                case .failure(let error):
                    let metadata: Logger.Metadata = ["tidegate.redis.slot": "\(slot)", "error": "\(error)"]
                    if (error as? RedisClientError)?.code == .setupFailed {
                        // AUTH or SELECT refused: a configuration error, worth seeing at every retry.
                        self.logger.warning("Redis refused the connection's setup", metadata: metadata)
                    } else {
                        self.logger.debug("Redis connect failed", metadata: metadata)
                    }
                    self.run(self.shared.withLockedValue { $0.machine.connectFailed(slot: slot) })
                }
            }
    }

    private func disconnected(slot: Int, _ connection: RedisConnection) {
        self.counterBox.disconnects.add(1, ordering: .relaxed)
        self.logger.debug("Redis connection closed", metadata: ["tidegate.redis.slot": "\(slot)"])
        self.run(self.shared.withLockedValue { $0.machine.disconnected(slot: slot, connection) })
    }

    private func run(_ action: RedisClientStateMachine<RedisConnection>.DownAction) {
        switch action {
        case .none:
            break
        case .reconnect(let slot, let attempt, let announce):
            if announce { self.announce() }
            let delay = RedisClientStateMachine<RedisConnection>.backoffMs(
                attempt: attempt, minMs: self.settings.backoffMinMs, maxMs: self.settings.backoffMaxMs,
                jitter: Double.random(in: 0.5...1))
            self.loops[slot].scheduleTask(in: .milliseconds(Int64(delay))) {
                if self.shared.withLockedValue({ $0.machine.reconnectDue(slot: slot) }) { self.connect(slot: slot) }
            }
        case .shutdownComplete:
            let waiters = self.shared.withLockedValue { shared in
                defer { shared.shutdownWaiters = [] }
                return shared.shutdownWaiters
            }
            for waiter in waiters { waiter.succeed(()) }
        }
    }

    /// Hands out queued availability changes, in order, outside the lock; only one thread at a time does.
    private func announce() {
        while let available = self.shared.withLockedValue({ $0.machine.nextAnnouncement() }) {
            if available {
                self.logger.notice("Redis available", metadata: ["tidegate.redis.endpoint": "\(self.endpoint)"])
            } else {
                self.logger.warning("Redis unavailable", metadata: ["tidegate.redis.endpoint": "\(self.endpoint)"])
            }
            self.onAvailabilityChange(available)
        }
    }

    private var endpoint: String { "\(self.settings.host):\(self.settings.port)" }
}
