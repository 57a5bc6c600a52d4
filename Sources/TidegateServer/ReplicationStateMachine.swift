import Cache
import DequeModule
import NIOCore
import PostgresWire
import Topology

/// The replication listener's protocol logic and bookkeeping, without I/O: what the walsender sent,
/// which commits wait for their invalidations, how far everything is applied, and the lag. Times are
/// passed in, so tests step it with plain values. One connection at a time; `disconnected` resets what
/// belongs to a connection and keeps what spans them (the time of the last catch-up, the counters).
struct ReplicationStateMachine {
    enum Phase: String, Sendable {
        case connecting, connected, down, stopped
    }

    enum Action: Equatable {
        case none
        /// Hand this commit's changes to the cache; report `applySucceeded` or `applyFailed`.
        case apply(ReplicationCommit)
        /// Send a standby status update with this position as written, flushed and applied.
        case sendStatus(LSN, replyRequested: Bool)
        /// Drop the connection: the stream cannot go on.
        case fail(String)
    }

    struct Status: Sendable, Equatable {
        var phase = Phase.down
        /// host:port of the node of the current or last connection.
        var node: String?
        var slot: String?
        /// The end of the last commit whose invalidations were applied.
        var lastCommitLSN: LSN?
        /// How far everything is applied (commit ends, and keepalive positions reached with nothing pending).
        var appliedLSN: LSN?
        /// The walsender's position at the last keepalive.
        var serverWALEnd: LSN?
        var commits = 0
        var rows = 0
        /// Connections that ended in an error, and the last such error.
        var errors = 0
        var lastError: String?
        /// Connections that reached the point where the slot existed (each one invalidated the cache).
        var restarts = 0
    }

    private(set) var status = Status()
    let relations: PgOutputDecoder.TrackedRelations
    let maxPendingCommits: Int
    /// A keepalive older than this no longer shows the listener caught up.
    let freshFor: TimeAmount
    /// A connection that hears nothing from the server for this long is dropped.
    let silenceLimit: TimeAmount
    private var decoder: PgOutputDecoder
    /// Commits decoded and not yet handed over, oldest first, and the one being applied.
    private var pending = Deque<ReplicationCommit>()
    private var applying: ReplicationCommit?
    private var serverEnd: (lsn: LSN, at: NIODeadline)?
    /// Keepalives not yet covered by what is applied, oldest first. Under a steady stream of commits a
    /// newer keepalive always arrives before the older one is reached; each is kept until it is, so the
    /// lag is the age of the newest keepalive covered, not the time since the stream last paused.
    private var keepalives = Deque<(lsn: LSN, at: NIODeadline)>()
    static let keepaliveLimit = 1_024
    private var lastReceived: NIODeadline
    /// The last moment everything the server had sent was known to be applied (start: the listener's start).
    private(set) var caughtUpAt: NIODeadline

    init(
        relations: PgOutputDecoder.TrackedRelations, maxPendingCommits: Int, freshFor: TimeAmount,
        silenceLimit: TimeAmount, now: NIODeadline
    ) {
        self.relations = relations
        self.maxPendingCommits = maxPendingCommits
        self.freshFor = freshFor
        self.silenceLimit = silenceLimit
        self.decoder = PgOutputDecoder(trackedRelations: relations)
        self.caughtUpAt = now
        self.lastReceived = now
    }

    /// Whether the server connection should be read: not while too many commits wait for the cache
    /// (backpressure instead of an unbounded queue).
    var wantsReading: Bool { self.pending.count < self.maxPendingCommits }

    /// Nothing received is waiting: then a keepalive's position is applied too.
    private var idle: Bool { self.pending.isEmpty && self.applying == nil && !self.decoder.inTransaction }

    // MARK: Events

    mutating func connecting(node: String, slot: String) {
        self.status.phase = .connecting
        self.status.node = node
        self.status.slot = slot
    }

    /// The slot exists and the cache was told to forget everything: streaming starts at `point`.
    mutating func slotReady(at point: LSN) {
        self.status.restarts += 1
        self.status.appliedLSN = point
    }

    /// The server answered START_REPLICATION with CopyBothResponse.
    mutating func streamStarted(now: NIODeadline) {
        self.status.phase = .connected
        self.lastReceived = now
    }

    mutating func copyData(_ frame: PostgresFrame, now: NIODeadline) -> Action {
        self.lastReceived = now
        let message: ReplicationMessage
        do {
            message = try ReplicationMessage.decode(copyData: frame)
        } catch {
            return .fail("invalid replication message: \(error.message)")
        }
        switch message {
        case .xLogData(_, _, _, let data):
            let commit: ReplicationCommit?
            do {
                commit = try self.decoder.decode(data)
            } catch {
                return .fail("\(error)")
            }
            guard let commit else { return .none }
            self.status.commits += 1
            self.status.rows += commit.rows.count
            guard self.applying == nil else {
                self.pending.append(commit)
                return .none
            }
            self.applying = commit
            return .apply(commit)
        case .primaryKeepalive(let walEnd, _, let replyRequested):
            let end = LSN(walEnd)
            self.serverEnd = (end, now)
            if self.keepalives.count >= Self.keepaliveLimit { self.keepalives.removeFirst() }
            self.keepalives.append((end, now))
            self.status.serverWALEnd = end
            // Everything the walsender decoded before this keepalive was sent before it; with nothing of it
            // waiting here, it is all applied.
            if self.idle { self.advance(to: end) }
            return replyRequested ? .sendStatus(self.position, replyRequested: false) : .none
        }
    }

    mutating func applySucceeded() -> Action {
        guard let done = self.applying else { return .none }
        self.applying = nil
        self.status.lastCommitLSN = done.endLSN
        self.advance(to: done.endLSN)
        if var next = self.pending.popFirst() {
            // Everything that queued up during the last apply goes as one: one Redis round trip for many
            // commits keeps the listener ahead of a busy primary.
            while let more = self.pending.popFirst() {
                next.rows.append(contentsOf: more.rows)
                next.wholeRelations.formUnion(more.wholeRelations)
                next.commitLSN = more.commitLSN
                next.endLSN = more.endLSN
                next.commitTime = more.commitTime
            }
            self.applying = next
            return .apply(next)
        }
        if self.idle, let serverEnd = self.serverEnd { self.advance(to: serverEnd.lsn) }
        return .none
    }

    mutating func applyFailed(_ error: String) -> Action {
        self.applying = nil
        return .fail("applying the invalidations of a commit failed: \(error)")
    }

    /// The status interval passed: report the position and ask for a keepalive (which measures the lag),
    /// unless the server has been silent too long.
    mutating func statusTick(now: NIODeadline) -> Action {
        guard self.status.phase == .connected else { return .none }
        // Not reading (backpressure) is not the server's silence.
        if !self.wantsReading { self.lastReceived = now }
        if now - self.lastReceived > self.silenceLimit {
            return .fail("no message from the server for \(self.silenceLimit.nanoseconds / 1_000_000) ms")
        }
        return .sendStatus(self.position, replyRequested: true)
    }

    /// The connection ended (`error` nil: on purpose). What was not applied is dropped: the next
    /// connection's slot starts after a full invalidation.
    mutating func disconnected(error: String?) {
        if let error {
            self.status.errors += 1
            self.status.lastError = error
        }
        if self.status.phase != .stopped { self.status.phase = .down }
        self.decoder = PgOutputDecoder(trackedRelations: self.relations)
        self.pending.removeAll()
        self.applying = nil
        self.serverEnd = nil
        self.keepalives.removeAll()
        self.status.appliedLSN = nil
        self.status.serverWALEnd = nil
    }

    mutating func stopped() {
        self.disconnected(error: nil)
        self.status.phase = .stopped
    }

    // MARK: Lag

    /// Milliseconds since the listener last was caught up; 0 while it is (connected, everything up to
    /// the last keepalive's position applied, and that keepalive recent).
    func lagMillis(now: NIODeadline) -> Int64 {
        if self.status.phase == .connected, let applied = self.status.appliedLSN, let serverEnd = self.serverEnd,
            applied >= serverEnd.lsn, now - serverEnd.at <= self.freshFor
        {
            return 0
        }
        return max(0, (now - self.caughtUpAt).nanoseconds / 1_000_000)
    }

    /// What the standby status update reports: how far everything is applied.
    private var position: LSN { self.status.appliedLSN ?? LSN(0) }

    private mutating func advance(to lsn: LSN) {
        if self.status.appliedLSN.map({ $0 < lsn }) ?? true { self.status.appliedLSN = lsn }
        // Caught up as of each keepalive now covered: measured when it arrived.
        guard let applied = self.status.appliedLSN else { return }
        while let first = self.keepalives.first, first.lsn <= applied {
            self.keepalives.removeFirst()
            if first.at > self.caughtUpAt { self.caughtUpAt = first.at }
        }
    }
}
