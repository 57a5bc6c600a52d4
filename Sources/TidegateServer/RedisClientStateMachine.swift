import DequeModule

/// The connection slots of a Redis client and their lifecycle: each slot connects, is up, or backs off
/// before its next attempt; the client is available while some slot is up. Changes of availability are
/// queued and handed out one at a time (`nextAnnouncement`), so the callback sees them in order even when
/// slots on different event loops change at once. Generic over the connection (plain objects in tests);
/// time and randomness stay outside.
struct RedisClientStateMachine<Connection: AnyObject> {
    enum Slot {
        case connecting(attempt: Int)
        case up(Connection)
        /// Waiting for the reconnect timer; `attempt` failed attempts so far.
        case backingOff(attempt: Int)
        /// Shutting down: its connection (or its connect in flight) has yet to finish.
        case closing
        case closed
    }

    enum Lifecycle {
        case running
        case shuttingDown
        case shutDown
    }

    enum Pick {
        case connection(Connection)
        case unavailable
        case shutDown
    }

    enum ConnectedAction {
        case none
        /// Start handing out availability announcements (`nextAnnouncement`).
        case announce
        /// Shutting down: close the new connection.
        case close(Connection)
    }

    enum DownAction {
        case none
        /// Reconnect the slot after the backoff of `attempt` failed attempts; `announce` as in ConnectedAction.
        case reconnect(slot: Int, attempt: Int, announce: Bool)
        /// Every slot is closed: complete the shutdown.
        case shutdownComplete
    }

    enum ShutdownAction {
        case alreadyShutDown
        /// Close these connections, then wait for the slots to close; `completeNow` when nothing is left.
        case close([Connection], completeNow: Bool, announce: Bool)
    }

    private(set) var slots: [Slot]
    private(set) var lifecycle = Lifecycle.running
    /// The event loop of each slot, as an identity (a caller's loop is preferred when picking).
    private let slotLoops: [ObjectIdentifier]
    private var announced = false
    private var announcements = Deque<Bool>()
    private var announcing = false
    private var nextPick = 0

    /// One slot per element of `loops`, each connecting from the start.
    init(loops: [ObjectIdentifier]) {
        self.slotLoops = loops
        self.slots = loops.map { _ in .connecting(attempt: 0) }
    }

    var isAvailable: Bool {
        self.slots.contains { slot in
            if case .up = slot { return true }
            return false
        }
    }

    /// A connection that is up, on `loop` when one is (no thread hop), else round robin over all.
    mutating func pick(preferring loop: ObjectIdentifier) -> Pick {
        switch self.lifecycle {
        case .running:
            break
        case .shuttingDown, .shutDown:
            return .shutDown
        }
        self.nextPick &+= 1
        var local: Connection?
        var any: Connection?
        let count = self.slots.count
        for offset in 0..<count {
            let index = (self.nextPick &+ offset) % count
            guard case .up(let connection) = self.slots[index] else { continue }
            if self.slotLoops[index] == loop {
                local = connection
                break
            }
            if any == nil { any = connection }
        }
        if let connection = local ?? any { return .connection(connection) }
        return .unavailable
    }

    mutating func connected(slot: Int, _ connection: Connection) -> ConnectedAction {
        switch self.slots[slot] {
        case .connecting:
            self.slots[slot] = .up(connection)
            return self.announceIfChanged() ? .announce : .none
        case .closing:
            return .close(connection)
        case .up, .backingOff, .closed:
            // Not this slot's connect (cannot happen): do not keep it.
            return .close(connection)
        }
    }

    mutating func connectFailed(slot: Int) -> DownAction {
        switch self.slots[slot] {
        case .connecting(let attempt):
            self.slots[slot] = .backingOff(attempt: attempt + 1)
            return .reconnect(slot: slot, attempt: attempt + 1, announce: false)
        case .closing:
            self.slots[slot] = .closed
            return self.shutdownCompleteIfDone()
        case .up, .backingOff, .closed:
            return .none
        }
    }

    /// The channel of `connection` closed.
    mutating func disconnected(slot: Int, _ connection: Connection) -> DownAction {
        switch self.slots[slot] {
        case .up(let current):
            guard current === connection else { return .none }
            // It was up: the first retry waits the shortest backoff.
            self.slots[slot] = .backingOff(attempt: 0)
            return .reconnect(slot: slot, attempt: 0, announce: self.announceIfChanged())
        case .closing:
            self.slots[slot] = .closed
            return self.shutdownCompleteIfDone()
        case .connecting, .backingOff, .closed:
            return .none
        }
    }

    /// The slot's reconnect timer fired: true when it should connect now.
    mutating func reconnectDue(slot: Int) -> Bool {
        switch self.slots[slot] {
        case .backingOff(let attempt):
            self.slots[slot] = .connecting(attempt: attempt)
            return true
        case .connecting, .up, .closing, .closed:
            return false
        }
    }

    mutating func shutdown() -> ShutdownAction {
        switch self.lifecycle {
        case .shutDown:
            return .alreadyShutDown
        case .shuttingDown:
            return .close([], completeNow: false, announce: false)
        case .running:
            self.lifecycle = .shuttingDown
        }
        var connections: [Connection] = []
        for index in self.slots.indices {
            switch self.slots[index] {
            case .up(let connection):
                connections.append(connection)
                self.slots[index] = .closing
            case .connecting:
                self.slots[index] = .closing
            case .backingOff:
                self.slots[index] = .closed
            case .closing, .closed:
                break
            }
        }
        let announce = self.announceIfChanged()
        if case .shutdownComplete = self.shutdownCompleteIfDone() {
            return .close(connections, completeNow: true, announce: announce)
        }
        return .close(connections, completeNow: false, announce: announce)
    }

    /// The next availability change to report, in order; nil when there is none (the caller that got
    /// `announce` stops handing them out, and the next change hands them out again).
    mutating func nextAnnouncement() -> Bool? {
        if let next = self.announcements.popFirst() { return next }
        self.announcing = false
        return nil
    }

    /// Queues a change of availability; true when the caller must hand announcements out.
    private mutating func announceIfChanged() -> Bool {
        let available = self.isAvailable
        guard available != self.announced else { return false }
        self.announced = available
        self.announcements.append(available)
        if self.announcing { return false }
        self.announcing = true
        return true
    }

    private mutating func shutdownCompleteIfDone() -> DownAction {
        guard case .shuttingDown = self.lifecycle else { return .none }
        for slot in self.slots {
            switch slot {
            case .closed: continue
            case .connecting, .up, .backingOff, .closing: return .none
            }
        }
        self.lifecycle = .shutDown
        return .shutdownComplete
    }

    /// The delay before reconnect attempt `attempt + 1`: `minMs × 2^attempt`, at most `maxMs`, scaled by
    /// `jitter` (0.5...1, random) and never below `minMs`.
    static func backoffMs(attempt: Int, minMs: Int, maxMs: Int, jitter: Double) -> Int {
        let (product, overflow) = minMs.multipliedReportingOverflow(by: 1 << min(attempt, 30))
        let base = overflow ? maxMs : min(maxMs, product)
        let delay = Int(Double(max(base, minMs)) * min(1, max(0.5, jitter)))
        return min(maxMs, max(minMs, delay))
    }
}

extension RedisClientStateMachine: Sendable where Connection: Sendable {}
extension RedisClientStateMachine.Slot: Sendable where Connection: Sendable {}
