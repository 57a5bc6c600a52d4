import DequeModule
import Logging
import NIOCore
import PostgresWire

/// A pool is keyed by (database, user, node).
struct PoolKey: Hashable, Sendable, CustomStringConvertible {
    var database: String
    var user: String
    var node: String
    var description: String { "\(self.user)/\(self.database)@\(self.node)" }
}

/// The server connections of one (database, user, node) on one event loop. Confined to that loop.
// @unchecked Sendable: confined to one event loop; every access happens on that loop (callbacks of
// futures created on it run there too), so no two threads ever touch it.
final class ServerPool: @unchecked Sendable {
    struct Waiter {
        var id: Int
        var promise: EventLoopPromise<ServerConnection>
        var deadline: NIODeadline
        var enqueuedAt: NIODeadline
    }

    let key: PoolKey
    let loop: any EventLoop
    let runtime: Runtime
    unowned let shard: LoopShard
    let logger: Logger
    private(set) var idle: [ServerConnection] = []
    private(set) var all: [Int: ServerConnection] = [:]
    private var connecting = 0
    private var waiters = Deque<Waiter>()
    private var nextWaiterID = 0
    var paused = false
    /// The ParameterStatus values a login with these startup settings produced, so the next such login
    /// can be answered without a server connection.
    private(set) var loginParameters: [[String]: [String: String]] = [:]
    // Statistics.
    var totalWaits = 0
    var totalWaitNanos: Int64 = 0
    var maxWaitNanos: Int64 = 0
    var totalCheckouts = 0

    init(key: PoolKey, shard: LoopShard, logger: Logger) {
        self.key = key
        self.loop = shard.loop
        self.runtime = shard.runtime
        self.shard = shard
        var logger = logger
        logger[metadataKey: "tidegate.pool"] = "\(key)"
        self.logger = logger
    }

    var waiting: Int { self.waiters.count }
    var active: Int { self.all.values.filter { !$0.isIdle }.count }
    var size: Int { self.all.count + self.connecting }

    /// pool.max_size: a budget shared by every loop's share of the pool.
    var maxSize: Int { self.shard.config.pool.maxSize }

    func rememberLoginParameters(_ parameters: [String: String], for settings: [String]) {
        if self.loginParameters.count >= 1_000 { self.loginParameters.removeAll() }
        self.loginParameters[settings] = parameters
    }

    /// An idle server connection that needs no liveness check, at once, or nil.
    func checkoutImmediately() -> ServerConnection? {
        guard !self.paused, self.waiters.isEmpty, let server = self.idle.last, !server.isClosed else { return nil }
        let check = self.shard.config.pool.livenessCheckAfterMs
        if check > 0 && NIODeadline.now() - server.lastUsedAt > .milliseconds(Int64(check)) { return nil }
        self.idle.removeLast()
        self.totalCheckouts += 1
        return server
    }

    /// A server connection for the caller, now or when one is free.
    func checkout() -> EventLoopFuture<ServerConnection> {
        self.loop.assertInEventLoop()
        self.totalCheckouts += 1
        if !self.paused, let server = self.takeIdle() {
            return self.ready(server)
        }
        let promise = self.loop.makePromise(of: ServerConnection.self)
        let config = self.shard.config
        self.nextWaiterID += 1
        let id = self.nextWaiterID
        let now = NIODeadline.now()
        let deadline = now + .milliseconds(Int64(config.pool.checkoutTimeoutMs))
        self.waiters.append(Waiter(id: id, promise: promise, deadline: deadline, enqueuedAt: now))
        self.scheduleExpiry(at: deadline)
        self.growIfNeeded()
        return promise.futureResult
    }

    /// Gives a server back. It goes to the first waiter or to the idle list.
    func release(_ server: ServerConnection) {
        self.loop.assertInEventLoop()
        server.detach()
        let config = self.shard.config
        if server.isClosed || server.mustClose {
            self.remove(server)
            return
        }
        if server.cancelsInFlight > 0 {
            // A cancel sent for the previous owner's query may still arrive: keep the connection out of
            // circulation until the cancel request is done.
            return
        }
        if NIODeadline.now() - server.createdAt > .milliseconds(Int64(config.pool.serverLifetimeMs)) {
            self.remove(server)
            server.close()
            self.growIfNeeded()
            return
        }
        if self.waiters.isEmpty && self.size > self.share && self.runtime.otherLoopsStarved(self.key, except: self.loop) {
            // Clients on another loop wait for a connection of this full pool: give the budget to them.
            self.remove(server)
            server.close()
            return
        }
        self.idle.append(server)
        self.serveWaiters()
    }

    /// A cancel request for `server` finished; it may go back to the pool if nobody owns it.
    func cancelFinished(_ server: ServerConnection) {
        server.cancelsInFlight -= 1
        if server.cancelsInFlight == 0 && server.owner == nil && !server.isClosed && !self.idle.contains(where: { $0 === server }) {
            self.release(server)
        }
    }

    /// Gives a checked-out connection a session's settings (RESET ALL, then its SET statements), unless it
    /// has them already. A setting the server refuses fails as FATAL, as PostgreSQL reports it at login.
    func prepare(_ server: ServerConnection, settings wanted: [String]) -> EventLoopFuture<ServerConnection> {
        let pool = self
        if server.appliedSettings == wanted { return server.loop.makeSucceededFuture(server) }
        var sql = server.appliedSettings.isEmpty ? [] : ["RESET ALL"]
        sql.append(contentsOf: wanted)
        return server.runInternal(sql.joined(separator: "; ")).map {
            server.appliedSettings = wanted
            return server
        }.flatMapError { error in
            if case TidegateError.serverRefused(var fields) = error {
                // The server is fine; the client's settings are not. Report like PostgreSQL does.
                server.appliedSettings = ["-- failed"]
                pool.release(server)
                fields.makeFatal()
                return server.loop.makeFailedFuture(TidegateError.serverRefused(fields))
            }
            pool.discard(server)
            return server.loop.makeFailedFuture(error)
        }
    }

    /// Drops a server that is broken or must not be reused.
    func discard(_ server: ServerConnection) {
        server.detach()
        self.remove(server)
        server.close()
        self.growIfNeeded()
    }

    private func remove(_ server: ServerConnection) {
        self.idle.removeAll { $0 === server }
        if self.all.removeValue(forKey: server.id) != nil {
            self.runtime.releaseConnection(self.key)
            let count = self.runtime.serverCount.subtract(1, ordering: .relaxed).newValue
            self.runtime.metrics.serverConnections.record(count)
        }
    }

    /// Closes the longest-idle connection for a loop whose clients wait while the pool is full: only if
    /// nobody waits here, and (for a loop below its share) only from above this loop's share.
    /// `requesterSize`: the asking loop's connections when it is below its fair share (nil: borrowing).
    func closeOneIdle(requesterSize: Int?) -> Bool {
        let allowed: Bool
        if let requesterSize {
            allowed = self.size > self.share || requesterSize == 0
        } else {
            allowed = true
        }
        guard allowed, self.waiters.isEmpty, let server = self.idle.first else { return false }
        self.remove(server)
        server.close()
        return true
    }

    private func takeIdle() -> ServerConnection? {
        while let server = self.idle.popLast() {
            if server.isClosed {
                self.remove(server)
                continue
            }
            return server
        }
        return nil
    }

    /// Runs the liveness check on a server that sat idle for long, then hands it over.
    private func ready(_ server: ServerConnection) -> EventLoopFuture<ServerConnection> {
        let config = self.shard.config
        let idleFor = NIODeadline.now() - server.lastUsedAt
        if config.pool.livenessCheckAfterMs > 0 && idleFor > .milliseconds(Int64(config.pool.livenessCheckAfterMs)) {
            return server.runInternal("").flatMap { server.loop.makeSucceededFuture(server) }.flatMapError {
                [self] error in
                self.logger.info("idle server connection failed its liveness check; replacing it", metadata: ["error": "\(error)"])
                self.discard(server)
                return self.checkout()
            }
        }
        return self.loop.makeSucceededFuture(server)
    }

    private func serveWaiters() {
        while !self.paused, !self.waiters.isEmpty, let server = self.takeIdle() {
            let waiter = self.waiters.removeFirst()
            self.recordWait(since: waiter.enqueuedAt)
            self.ready(server).cascade(to: waiter.promise)
        }
        self.clearStarvedIfServed()
    }

    private func clearStarvedIfServed() {
        if self.starved && self.waiters.isEmpty {
            self.starved = false
            self.runtime.setStarved(self.key, loop: self.loop, false)
        }
    }

    private func recordWait(since: NIODeadline) {
        let nanos = (NIODeadline.now() - since).nanoseconds
        self.totalWaits += 1
        self.totalWaitNanos += nanos
        self.maxWaitNanos = max(self.maxWaitNanos, nanos)
        self.runtime.metrics.poolWait.recordNanoseconds(nanos)
    }

    /// One timer for all waiters (not one per waiter): it fires at the earliest deadline.
    private var expiryTimer: (deadline: NIODeadline, task: Scheduled<Void>)?

    private func scheduleExpiry(at deadline: NIODeadline) {
        if let timer = self.expiryTimer, timer.deadline <= deadline { return }
        self.expiryTimer?.task.cancel()
        let task = self.loop.scheduleTask(deadline: deadline) { [weak self] in
            guard let self else { return }
            self.expiryTimer = nil
            self.expireWaiters()
        }
        self.expiryTimer = (deadline, task)
    }

    private func expireWaiters() {
        let now = NIODeadline.now()
        let config = self.shard.config
        var expired: [Waiter] = []
        var kept = Deque<Waiter>()
        for waiter in self.waiters {
            if waiter.deadline <= now { expired.append(waiter) } else { kept.append(waiter) }
        }
        self.waiters = kept
        if let next = self.waiters.map(\.deadline).min() { self.scheduleExpiry(at: next) }
        self.clearStarvedIfServed()
        for waiter in expired {
            waiter.promise.fail(
                TidegateError.poolTimeout(
                    "no server connection for \(self.key) became free within \(config.pool.checkoutTimeoutMs) ms (pool.max_size \(config.pool.maxSize))"
                ))
        }
    }

    /// This loop's fair share of pool.max_size.
    var share: Int {
        let config = self.shard.config
        return max(1, (config.pool.maxSize + config.threads - 1) / config.threads)
    }

    /// Opens connections while clients wait and the pool has room. pool.max_size is one budget for all
    /// loops; when it is used up:
    /// - a loop below its fair share has idle connections of loops above theirs closed for it at once,
    ///   and the next connection such a loop returns to its pool goes to it (fairness, converges fast);
    /// - a loop at its share borrows only after its clients waited `borrowDelay`, and only connections
    ///   idle on a loop where nobody waits (so a loaded pool never churns connections).
    func growIfNeeded() {
        guard !self.paused else { return }
        while self.connecting < self.waiters.count {
            guard self.runtime.reserveConnection(self.key, maxSize: self.maxSize) else {
                if self.size < self.share {
                    if !self.starved {
                        self.starved = true
                        self.runtime.setStarved(self.key, loop: self.loop, true)
                        self.runtime.reclaimIdleConnection(self.key, for: self.loop, requesterSize: self.size)
                    }
                }
                self.scheduleBorrow()
                return
            }
            self.openConnection()
        }
        self.clearStarvedIfServed()
    }

    static let borrowDelay = TimeAmount.milliseconds(100)
    private var borrowTimer: Scheduled<Void>?

    /// While clients wait here and the budget is used up, every `borrowDelay` ask the other loops for
    /// a connection that sits idle where nobody waits.
    private func scheduleBorrow() {
        guard self.borrowTimer == nil else { return }
        self.borrowTimer = self.loop.scheduleTask(in: Self.borrowDelay) { [weak self] in
            guard let self else { return }
            self.borrowTimer = nil
            guard !self.waiters.isEmpty, self.connecting < self.waiters.count else { return }
            self.runtime.reclaimIdleConnection(self.key, for: self.loop, requesterSize: nil)
            self.scheduleBorrow()
        }
    }

    private var starved = false
    private var lastLoginWarning: NIODeadline?
    private var suppressedLoginWarnings = 0

    /// Keeps at least this loop's share of min_size open; closes connections idle too long.
    func maintain() {
        let config = self.shard.config
        let now = NIODeadline.now()
        let minShare = (config.pool.minSize + config.threads - 1) / config.threads
        var excess = self.all.count - minShare
        for server in self.idle where excess > 0 {
            if now - server.lastUsedAt > .milliseconds(Int64(config.pool.idleTimeoutMs))
                || now - server.createdAt > .milliseconds(Int64(config.pool.serverLifetimeMs))
            {
                self.remove(server)
                server.close()
                excess -= 1
            }
        }
        while self.size < minShare && self.runtime.reserveConnection(self.key, maxSize: self.maxSize) {
            self.openConnection()
        }
        if self.starved { self.growIfNeeded() }
    }

    private func openConnection() {
        let config = self.shard.config
        guard let node = self.runtime.node(named: self.key.node) else { return }
        let user = config.users[self.key.user]
        let password = user?.backendPassword ?? user.flatMap { SCRAMVerifier.looksLikeVerifier($0.password) ? nil : $0.password }
        let server = ServerConnection(
            key: self.key, node: node, loop: self.loop, password: password.flatMap { $0.isEmpty ? nil : $0 },
            maxMessageBytes: config.limits.maxMessageBytes, logger: self.logger)
        self.connecting += 1
        self.runtime.metrics.serverConnects.increment()
        server.connect(
            connectTimeout: .milliseconds(Int64(config.pool.connectTimeoutMs)),
            maxMessageBytes: config.limits.maxMessageBytes
        ).whenComplete { [self] result in
            self.connecting -= 1
            switch result {
            case .success:
                self.all[server.id] = server
                let count = self.runtime.serverCount.add(1, ordering: .relaxed).newValue
                self.runtime.metrics.serverConnections.record(count)
                server.channel?.closeFuture.whenComplete { [weak self, weak server] _ in
                    guard let self, let server else { return }
                    self.remove(server)
                }
                self.idle.append(server)
                self.serveWaiters()
            case .failure(let error):
                self.runtime.releaseConnection(self.key)
                // While a node is down every waiting client's attempt fails alike: one warning a second.
                let now = NIODeadline.now()
                if let last = self.lastLoginWarning, now - last < .seconds(1) {
                    self.suppressedLoginWarnings += 1
                    self.logger.debug("server login failed", metadata: ["error": "\(error)"])
                } else {
                    var metadata: Logger.Metadata = ["error": "\(error)"]
                    if self.suppressedLoginWarnings > 0 { metadata["tidegate.suppressed"] = "\(self.suppressedLoginWarnings)" }
                    self.logger.warning("server login failed", metadata: metadata)
                    self.lastLoginWarning = now
                    self.suppressedLoginWarnings = 0
                }
                self.runtime.metrics.serverConnectFailures.increment()
                // A login failure fails every client that is waiting: the next attempt would fail alike.
                while !self.waiters.isEmpty {
                    let waiter = self.waiters.removeFirst()
                            waiter.promise.fail(error)
                }
                self.clearStarvedIfServed()
            }
        }
    }

    /// Snapshot rows for SHOW SERVERS.
    func serverRows() -> [[String?]] {
        self.all.values.sorted { $0.id < $1.id }.map { server in
            [
                "\(server.id)", self.key.user, self.key.database, self.key.node, "\(server.node.host):\(server.node.port)",
                server.stateName, "\(server.backendKey.processID)", server.ownerDescription.isEmpty ? nil : server.ownerDescription,
                "\(server.prepared.count)", "\(Int((NIODeadline.now() - server.createdAt).nanoseconds / 1_000_000_000))",
            ]
        }
    }

    /// Closes every idle connection (a drained node).
    func closeIdle() {
        for server in self.idle {
            self.remove(server)
            server.close()
        }
    }

    func closeAll() {
        for server in Array(self.all.values) {
            self.remove(server)
            server.close()
        }
    }

    func resume() {
        self.paused = false
        self.serveWaiters()
        self.growIfNeeded()
    }
}
