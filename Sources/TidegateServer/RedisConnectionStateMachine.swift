import Cache
import DequeModule
import NIOCore

/// The state of one Redis connection: setup commands (AUTH, SELECT) first, then commands whose replies come
/// back in the order they were sent, each with a deadline. Generic over what waits for a reply (a promise in
/// `RedisConnection`, plain values in tests); time is passed in, never read.
///
/// Deadlines on one connection never decrease along the queue (every command gets the same timeout, setup
/// commands come first), so one timer at the oldest command's deadline covers them all.
struct RedisConnectionStateMachine<Request> {
    enum State {
        /// The handler is in place; the channel is not active yet.
        case initialized
        /// Setup commands sent, `remaining` replies still owed.
        case settingUp(remaining: Int)
        case ready
        /// Closing or closed: absorbing. Nothing more is sent, every reply is ignored.
        case closed
    }

    enum Action {
        case none
        /// Write the event's commands (and flush); arm the timer at `armTimer` when given.
        case write(armTimer: NIODeadline?)
        /// Fail the event's requests at once with `error`: they were not sent.
        case reject(RedisClientError)
        case succeed(Request, RedisValue)
        /// Every setup command succeeded: the connection can be handed out.
        case becameReady
        case armTimer(NIODeadline)
        /// Close the channel (unless `closeChannel` is false: it is already inactive) and fail `requests`
        /// in order: the first `timedOut` of them with a timeout, the rest with `error`.
        case fail(requests: [Request], timedOut: Int, error: RedisClientError, closeChannel: Bool)
    }

    private struct Entry {
        /// nil for a setup command.
        var request: Request?
        var deadline: NIODeadline
    }

    private(set) var state = State.initialized
    private var queue = Deque<Entry>()
    private var timerArmed = false

    var pendingCount: Int { self.queue.count }

    /// The channel is active: `setupDeadline` bounds the replies to `setupCount` setup commands.
    mutating func activated(setupCount: Int, setupDeadline: NIODeadline) -> Action {
        switch self.state {
        case .initialized:
            if setupCount == 0 {
                self.state = .ready
                return .becameReady
            }
            self.state = .settingUp(remaining: setupCount)
            for _ in 0..<setupCount { self.queue.append(Entry(request: nil, deadline: setupDeadline)) }
            return .write(armTimer: self.armIfIdle(setupDeadline))
        case .settingUp, .ready, .closed:
            return .none
        }
    }

    /// Commands to send, one request per command, all with `deadline`.
    mutating func send(_ requests: [Request], deadline: NIODeadline) -> Action {
        switch self.state {
        case .closed:
            return .reject(RedisClientError(.connectionClosed, "the Redis connection is closed"))
        case .initialized:
            return .reject(RedisClientError(.connectionClosed, "the Redis connection is not connected yet"))
        case .settingUp, .ready:
            // Queued behind the setup commands while they run: Redis answers in order.
            for request in requests { self.queue.append(Entry(request: request, deadline: deadline)) }
            return .write(armTimer: self.armIfIdle(deadline))
        }
    }

    mutating func replyReceived(_ value: RedisValue) -> Action {
        switch self.state {
        case .closed:
            return .none
        case .initialized:
            return self.closeAndFailAll(RedisClientError(.protocolViolation, "a reply before any command"))
        case .settingUp(let remaining):
            guard let entry = self.queue.popFirst() else {
                return self.closeAndFailAll(RedisClientError(.protocolViolation, "a reply nobody asked for"))
            }
            if let request = entry.request {
                // Cannot happen (setup entries are in front), but a reply still belongs to its request.
                return .succeed(request, value)
            }
            if case .error(let message) = value {
                return self.closeAndFailAll(RedisClientError(.setupFailed, message))
            }
            if remaining == 1 {
                self.state = .ready
                return .becameReady
            }
            self.state = .settingUp(remaining: remaining - 1)
            return .none
        case .ready:
            guard let entry = self.queue.popFirst() else {
                return self.closeAndFailAll(RedisClientError(.protocolViolation, "a reply nobody asked for"))
            }
            guard let request = entry.request else {
                return self.closeAndFailAll(RedisClientError(.protocolViolation, "a setup reply after setup"))
            }
            return .succeed(request, value)
        }
    }

    /// The timer armed by an action fired.
    mutating func timerFired(now: NIODeadline) -> Action {
        self.timerArmed = false
        switch self.state {
        case .closed, .initialized:
            return .none
        case .settingUp, .ready:
            guard let first = self.queue.first else { return .none }
            if first.deadline > now {
                self.timerArmed = true
                return .armTimer(first.deadline)
            }
            if case .settingUp = self.state {
                return self.closeAndFailAll(RedisClientError(.timeout, "no reply to AUTH/SELECT in time"))
            }
            // Replies are ordered: nothing behind an unanswered command can arrive in time either.
            let timedOut = self.queue.prefix(while: { $0.deadline <= now }).count(where: { $0.request != nil })
            return self.closeAndFailAll(
                RedisClientError(.connectionClosed, "closed after an earlier command timed out"), timedOut: timedOut)
        }
    }

    /// Redis's bytes could not be decoded, the channel reported an error, or the owner closes it.
    mutating func closeRequested(_ error: RedisClientError) -> Action {
        switch self.state {
        case .closed:
            return .none
        case .initialized, .settingUp, .ready:
            return self.closeAndFailAll(error)
        }
    }

    mutating func channelInactive() -> Action {
        switch self.state {
        case .closed:
            return .none
        case .initialized, .settingUp, .ready:
            self.state = .closed
            let requests = self.queue.compactMap(\.request)
            self.queue.removeAll()
            return .fail(
                requests: requests, timedOut: 0,
                error: RedisClientError(.connectionClosed, "Redis closed the connection"), closeChannel: false)
        }
    }

    private mutating func armIfIdle(_ deadline: NIODeadline) -> NIODeadline? {
        if self.timerArmed { return nil }
        self.timerArmed = true
        return deadline
    }

    private mutating func closeAndFailAll(_ error: RedisClientError, timedOut: Int = 0) -> Action {
        self.state = .closed
        let requests = self.queue.compactMap(\.request)
        self.queue.removeAll()
        return .fail(requests: requests, timedOut: timedOut, error: error, closeChannel: true)
    }
}
