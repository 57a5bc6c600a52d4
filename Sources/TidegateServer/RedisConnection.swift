import Cache
import Logging
import NIOCore
import Synchronization

/// Counters of one Redis client, shared by its connections (read for the admin view).
final class RedisCounters: Sendable {
    let commandsSent = Atomic<Int>(0)
    let replies = Atomic<Int>(0)
    /// RESP error replies (answers, not failures).
    let errorReplies = Atomic<Int>(0)
    /// Commands that got no reply by their deadline.
    let timeouts = Atomic<Int>(0)
    let connects = Atomic<Int>(0)
    let disconnects = Atomic<Int>(0)
    /// Commands failed at once because no connection was up.
    let rejected = Atomic<Int>(0)
}

/// One TCP connection to Redis: sends AUTH and SELECT when it becomes active, then pipelines commands
/// (every command of one `send` in one write and one flush) and matches replies to them in order. A
/// command not answered by its deadline fails with a timeout and closes the connection, failing every
/// command still pending: RESP replies are ordered, so nothing behind it could be matched any more.
///
/// The handler decodes and runs what `RedisConnectionStateMachine` returns; it holds no protocol logic.
// @unchecked Sendable: confined to its channel's event loop. `send` and `close` assert that they run there,
// every other method is a channel callback or a timer scheduled on that loop, so no two threads touch it.
final class RedisConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    typealias Machine = RedisConnectionStateMachine<EventLoopPromise<RedisValue>>

    let loop: any EventLoop
    private let setup: [RedisCommand]
    private let setupTimeout: TimeAmount
    private let commandTimeout: TimeAmount
    private let counters: RedisCounters
    private let logger: Logger
    private var machine = Machine()
    private let decoder = RESPDecoder()
    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    /// Reused for every write: once a write is flushed, the next encode finds it unshared.
    private var outbound = ByteBuffer()
    /// Made when the handler is added: a connect that fails before the channel exists never leaves it pending.
    private var readyPromise: EventLoopPromise<Void>?

    /// `setup` (AUTH, SELECT) is sent first when the channel becomes active; its replies must come within
    /// `setupTimeout`. Every later command gets `commandTimeout`.
    init(
        loop: any EventLoop, setup: [RedisCommand], setupTimeout: TimeAmount, commandTimeout: TimeAmount,
        counters: RedisCounters, logger: Logger
    ) {
        self.loop = loop
        self.setup = setup
        self.setupTimeout = setupTimeout
        self.commandTimeout = commandTimeout
        self.counters = counters
        self.logger = logger
    }

    /// Succeeds when every setup command succeeded; fails when the connection closed before.
    var ready: EventLoopFuture<Void> {
        self.readyPromise?.futureResult
            ?? self.loop.makeFailedFuture(RedisClientError(.connectionClosed, "the Redis connection never started"))
    }

    /// Sends `commands` in one write; the future (on this connection's loop) has one reply per command, in
    /// order. RESP error replies are values; it fails only when the connection fails or times out.
    func send(_ commands: [RedisCommand]) -> EventLoopFuture<[RedisValue]> {
        self.loop.preconditionInEventLoop()
        let promises = commands.map { _ in self.loop.makePromise(of: RedisValue.self) }
        let action = self.machine.send(promises, deadline: .now() + self.commandTimeout)
        self.run(action, writing: commands, for: promises)
        return EventLoopFuture.whenAllSucceed(promises.map(\.futureResult), on: self.loop)
    }

    /// Closes the connection, failing every pending command with `error`.
    func close(_ error: RedisClientError = RedisClientError(.connectionClosed, "the Redis connection was closed")) {
        self.loop.preconditionInEventLoop()
        self.run(self.machine.closeRequested(error))
    }

    private func run(
        _ action: Machine.Action, writing commands: [RedisCommand] = [],
        for requests: [EventLoopPromise<RedisValue>] = []
    ) {
        switch action {
        case .none:
            break
        case .write(let deadline):
            guard let context = self.context else { break }
            self.outbound.clear()
            for command in commands { RESPEncoder.command(command, into: &self.outbound) }
            context.writeAndFlush(self.wrapOutboundOut(self.outbound), promise: nil)
            self.counters.commandsSent.add(commands.count, ordering: .relaxed)
            if let deadline { self.arm(deadline) }
        case .reject(let error):
            for request in requests { request.fail(error) }
        case .succeed(let request, let value):
            request.succeed(value)
        case .becameReady:
            self.completeReady(nil)
        case .armTimer(let deadline):
            self.arm(deadline)
        case .fail(let failed, let timedOut, let error, let closeChannel):
            self.timer?.cancel()
            self.timer = nil
            if timedOut > 0 {
                self.counters.timeouts.add(timedOut, ordering: .relaxed)
                self.logger.debug(
                    "Redis command timed out; closing the connection", metadata: ["pending": "\(failed.count)"])
            } else {
                self.logger.debug("Redis connection closing", metadata: ["reason": "\(error)"])
            }
            // Close first: the client sees the connection go away before any failed caller retries.
            if closeChannel { self.context?.close(promise: nil) }
            self.completeReady(error)
            let timeoutMs = self.commandTimeout.nanoseconds / 1_000_000
            let timeout = RedisClientError(.timeout, "no reply within \(timeoutMs) ms")
            for (index, request) in failed.enumerated() { request.fail(index < timedOut ? timeout : error) }
        }
    }

    /// Completes the ready promise once; `ready` then reports how setup ended.
    private func completeReady(_ error: RedisClientError?) {
        guard let promise = self.readyPromise, !self.readyCompleted else { return }
        self.readyCompleted = true
        if let error { promise.fail(error) } else { promise.succeed(()) }
    }

    private var readyCompleted = false

    private func arm(_ deadline: NIODeadline) {
        self.timer = self.loop.scheduleTask(deadline: deadline) {
            self.timer = nil
            self.run(self.machine.timerFired(now: .now()))
        }
    }

    // MARK: ChannelInboundHandler

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if self.readyPromise == nil { self.readyPromise = context.eventLoop.makePromise(of: Void.self) }
        if context.channel.isActive { self.activate() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        // A handler that goes away fails what it still owes (and its ready promise) rather than leak them.
        self.run(self.machine.channelInactive())
    }

    func channelActive(context: ChannelHandlerContext) {
        self.activate()
        context.fireChannelActive()
    }

    private func activate() {
        let action = self.machine.activated(setupCount: self.setup.count, setupDeadline: .now() + self.setupTimeout)
        self.run(action, writing: self.setup)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.decoder.feed(self.unwrapInboundIn(data))
        var replies = 0
        var errors = 0
        defer {
            self.counters.replies.add(replies, ordering: .relaxed)
            if errors > 0 { self.counters.errorReplies.add(errors, ordering: .relaxed) }
        }
        do {
            while let value = try self.decoder.next() {
                replies += 1
                if case .error = value { errors += 1 }
                self.run(self.machine.replyReceived(value))
                // A reply's callback or a failed setup may have closed the connection.
                if case .closed = self.machine.state { return }
            }
        } catch {
            self.logger.warning(
                "Redis sent bytes that are not RESP; closing the connection", metadata: ["error": "\(error)"])
            self.run(self.machine.closeRequested(RedisClientError(.protocolViolation, "\(error)")))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.run(self.machine.channelInactive())
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.run(self.machine.closeRequested(RedisClientError(.connectionClosed, "\(error)")))
    }
}
