import Logging
import NIOCore
import Topology

/// Asks the primary for its WAL position after writes commit: `pg_current_wal_lsn()` read after a commit
/// is at or past that commit's record, so it is a version a cache tag can take and a position a replica
/// must have replayed to show the write. One connection per event loop; callers that arrive while a
/// probe is out share the next one, so a burst of commits costs one round trip.
// @unchecked Sendable: confined to its event loop, like the sessions that use it.
final class CommitLSNProbe: @unchecked Sendable {
    let loop: any EventLoop
    let logger: Logger
    private var connection: ServerConnection?
    private var connectionNode = ""
    private var inFlight = false
    /// Callers waiting for the probe after the one in flight.
    private var waiting: [EventLoopPromise<LSN>] = []

    init(loop: any EventLoop, logger: Logger) {
        self.loop = loop
        self.logger = logger
    }

    /// A position at or past every commit acknowledged to this loop before the call.
    func position(config: TidegateConfig, primary: String?) -> EventLoopFuture<LSN> {
        let promise = self.loop.makePromise(of: LSN.self)
        self.waiting.append(promise)
        if !self.inFlight { self.send(config: config, primary: primary) }
        return promise.futureResult
    }

    private func send(config: TidegateConfig, primary: String?) {
        let waiters = self.waiting
        self.waiting = []
        guard !waiters.isEmpty else { return }
        guard let login = config.healthLogin, let name = primary ?? config.nodes.first?.name, let node = config.node(named: name) else {
            for waiter in waiters { waiter.fail(TidegateError.serverUnavailable("no primary to read the WAL position from")) }
            return
        }
        self.inFlight = true
        let connection: EventLoopFuture<ServerConnection>
        if let existing = self.connection, !existing.isClosed, self.connectionNode == name {
            connection = self.loop.makeSucceededFuture(existing)
        } else {
            self.connection?.close()
            let server = ServerConnection(
                key: PoolKey(database: config.health.database, user: login.user, node: name), node: node.endpoint, loop: self.loop,
                password: login.password, maxMessageBytes: 1 << 20, logger: self.logger)
            self.connection = server
            self.connectionNode = name
            connection = server.connect(connectTimeout: .milliseconds(Int64(config.pool.connectTimeoutMs)), maxMessageBytes: 1 << 20)
                .map { server }
        }
        connection.flatMap { $0.runInternalRows("SELECT pg_catalog.pg_current_wal_lsn()") }.whenComplete { result in
            self.inFlight = false
            switch result {
            case .success(let rows):
                if let text = rows.first?.first ?? nil, let lsn = LSN(text) {
                    for waiter in waiters { waiter.succeed(lsn) }
                } else {
                    for waiter in waiters { waiter.fail(TidegateError.serverUnavailable("the primary gave no WAL position")) }
                }
            case .failure(let error):
                self.connection?.close()
                self.connection = nil
                for waiter in waiters { waiter.fail(error) }
            }
            if !self.waiting.isEmpty { self.send(config: config, primary: primary) }
        }
    }

    func close() {
        self.connection?.close()
        self.connection = nil
    }
}
