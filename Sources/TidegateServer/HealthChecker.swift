import Logging
import NIOCore
import NIOPosix
import PostgresWire
import Topology

/// What Tidegate knows of every node, published to each event loop after each round of probes.
struct TopologyView: Sendable {
    struct NodeDetail: Sendable {
        var host: String
        var port: Int
        var receiveLSN: LSN?
        /// Round trip of the last probe, in milliseconds.
        var probeMs: Double?
        var lastError: String?
    }

    /// One entry per configured node, in configuration order.
    var nodes: [NodeSnapshot] = []
    var details: [String: NodeDetail] = [:]
    /// Names of the nodes that claim to be primary (more than one is a split-brain).
    var primaries: [String] = []
    /// The last successful probe of the (single) primary: when it was sent and the WAL position it
    /// reported (pg_current_wal_lsn, the write position). A commit acknowledged before `sentAt` was
    /// flushed (synchronous_commit on), so it is at or below `lsn`.
    var primaryProbe: (sentAt: NIODeadline, lsn: LSN)?
    /// Increases with every publication.
    var version = 0

    var splitBrain: Bool { self.primaries.count > 1 }
    var primary: String? { self.primaries.count == 1 ? self.primaries[0] : nil }
}

/// A promise that ignores all but its first completion (a probe's answer may race its timeout).
// @unchecked Sendable: used on one event loop only.
final class OncePromise<Value: Sendable>: @unchecked Sendable {
    private let promise: EventLoopPromise<Value>
    private var done = false

    init(_ promise: EventLoopPromise<Value>) { self.promise = promise }

    var futureResult: EventLoopFuture<Value> { self.promise.futureResult }

    func succeed(_ value: Value) {
        guard !self.done else { return }
        self.done = true
        self.promise.succeed(value)
    }

    func fail(_ error: any Error) {
        guard !self.done else { return }
        self.done = true
        self.promise.fail(error)
    }
}

/// Probes every node (every `health.interval_ms`): whether it is in recovery, its replay and receive
/// positions (replicas) or current WAL position (primary). Roles come from the answers, never from the
/// configuration. A node that fails a probe is down; it counts as up again only after
/// `health.up_after` probes in a row pass (flap damping). Lives on one event loop.
// @unchecked Sendable: confined to its event loop; every access happens there.
final class HealthChecker: @unchecked Sendable {
    /// What one node's probes have found so far.
    // @unchecked Sendable: touched only on the checker's event loop.
    final class Probe: @unchecked Sendable {
        let name: String
        let region: String
        var endpoint: TidegateConfig.Node
        var connection: ServerConnection?
        var inProgress = false
        var damper: FlapDamper
        var everUp = false
        var role = NodeSnapshot.Role.unknown
        var lsn: LSN?
        var receiveLSN: LSN?
        /// pg_last_xact_replay_timestamp lag, for when no primary is known.
        var replayLagSeconds: Double?
        var probeMs: Double?
        var lastError: String?
        var up = false

        init(node: TidegateConfig.NamedNode, upAfter: Int) {
            self.name = node.name
            self.region = node.region
            self.endpoint = node.endpoint
            self.damper = FlapDamper(required: upAfter)
        }
    }

    static let probeSQL = """
        SELECT pg_catalog.pg_is_in_recovery(), \
        CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() \
        ELSE pg_catalog.pg_current_wal_lsn() END, \
        pg_catalog.pg_last_wal_receive_lsn(), \
        CASE WHEN pg_catalog.pg_last_wal_receive_lsn() IS DISTINCT FROM pg_catalog.pg_last_wal_replay_lsn() \
        THEN extract(epoch FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp()) ELSE 0 END
        """

    let loop: any EventLoop
    let runtime: Runtime
    let logger: Logger
    private var probes: [Probe] = []
    private var timer: RepeatedTask?
    private var version = 0
    /// Primary WAL positions seen by recent probes, oldest first: a replica's lag in seconds is the age of
    /// the oldest position it has not replayed yet.
    private var primaryHistory: [(at: NIODeadline, lsn: LSN)] = []
    private var primaryProbe: (sentAt: NIODeadline, lsn: LSN)?
    private var reportedSplitBrain = false

    init(loop: any EventLoop, runtime: Runtime, logger: Logger) {
        self.loop = loop
        self.runtime = runtime
        var logger = logger
        logger[metadataKey: "tidegate.component"] = "health"
        self.logger = logger
    }

    func start() {
        self.round()
        let interval = Int64(self.runtime.config.health.intervalMs)
        self.timer = self.loop.scheduleRepeatedTask(initialDelay: .milliseconds(interval), delay: .milliseconds(interval)) {
            [weak self] _ in
            self?.round()
        }
    }

    func stop() {
        self.timer?.cancel()
        for probe in self.probes { probe.connection?.close() }
    }

    /// Keeps the probes of nodes still configured; adds new ones (after a reload).
    func configure(_ config: TidegateConfig) {
        var kept: [Probe] = []
        for node in config.nodes {
            if let probe = self.probes.first(where: { $0.name == node.name }) {
                if probe.endpoint != node.endpoint {
                    probe.connection?.close()
                    probe.connection = nil
                    probe.endpoint = node.endpoint
                }
                kept.append(probe)
            } else {
                kept.append(Probe(node: node, upAfter: config.health.upAfter))
            }
        }
        for probe in self.probes where !kept.contains(where: { $0 === probe }) { probe.connection?.close() }
        self.probes = kept
    }

    private var pendingProbes = 0
    private var configuredNodes: [TidegateConfig.NamedNode] = []

    /// Probes every node once, then publishes what was learned.
    private func round() {
        guard self.pendingProbes == 0 else { return }
        let config = self.runtime.config
        if config.nodes != self.configuredNodes {
            self.configuredNodes = config.nodes
            self.configure(config)
        }
        self.pendingProbes = self.probes.count
        for probe in self.probes {
            self.probe(probe, config: config).whenComplete { [self] result in
                switch result {
                case .success(let sentAt):
                    self.record(probe, success: true, config: config)
                    if probe.role == .primary, let lsn = probe.lsn {
                        self.notePrimary(lsn: lsn, sentAt: sentAt)
                    }
                case .failure(let error):
                    probe.lastError = "\(error)"
                    probe.connection?.close()
                    probe.connection = nil
                    self.record(probe, success: false, config: config)
                }
                self.pendingProbes -= 1
                if self.pendingProbes == 0 { self.publish(config: config) }
            }
        }
    }

    private func record(_ probe: Probe, success: Bool, config: TidegateConfig) {
        let wasUp = probe.up
        if success && !probe.everUp {
            // Nothing to damp at start: the first answer counts.
            probe.everUp = true
            probe.up = true
            probe.damper = FlapDamper(required: config.health.upAfter, startsUp: true)
        } else {
            probe.up = probe.damper.record(success: success)
        }
        if success { probe.lastError = nil }
        if wasUp != probe.up {
            self.logger.notice(
                "node \(probe.up ? "up" : "down")",
                metadata: ["node": "\(probe.name)", "role": "\(probe.role.rawValue)", "error": "\(probe.lastError ?? "")"])
        }
    }

    private func notePrimary(lsn: LSN, sentAt: NIODeadline) {
        self.primaryProbe = (sentAt, lsn)
        if self.primaryHistory.last.map({ $0.lsn < lsn }) ?? true {
            self.primaryHistory.append((sentAt, lsn))
        }
        let horizon = NIODeadline.now() - .minutes(10)
        if let first = self.primaryHistory.first, first.at < horizon || self.primaryHistory.count > 4_096 {
            self.primaryHistory.removeAll { $0.at < horizon }
            if self.primaryHistory.count > 4_096 { self.primaryHistory.removeFirst(self.primaryHistory.count - 4_096) }
        }
    }

    /// Runs one probe; succeeds with the time the query was sent.
    private func probe(_ probe: Probe, config: TidegateConfig) -> EventLoopFuture<NIODeadline> {
        let timeout = TimeAmount.milliseconds(Int64(config.health.timeoutMs))
        let promise = OncePromise(self.loop.makePromise(of: NIODeadline.self))
        let timer = self.loop.scheduleTask(in: timeout) {
            probe.connection?.close()
            probe.connection = nil
            promise.fail(TidegateError.serverUnavailable("no answer within \(config.health.timeoutMs) ms (health.timeout_ms)"))
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        guard let login = config.healthLogin else {
            // Nobody to log in as: a TCP connect is all the probe can do (the role stays unknown).
            let started = NIODeadline.now()
            ClientBootstrap(group: self.loop).connectTimeout(timeout).connect(host: probe.endpoint.host, port: probe.endpoint.port)
                .whenComplete { result in
                    switch result {
                    case .success(let channel):
                        channel.close(promise: nil)
                        probe.probeMs = Double((NIODeadline.now() - started).nanoseconds) / 1e6
                        promise.succeed(started)
                    case .failure(let error):
                        promise.fail(error)
                    }
                }
            return promise.futureResult
        }
        let connection: EventLoopFuture<ServerConnection>
        if let existing = probe.connection, !existing.isClosed {
            connection = self.loop.makeSucceededFuture(existing)
        } else {
            let server = ServerConnection(
                key: PoolKey(database: config.health.database, user: login.user, node: probe.name), node: probe.endpoint,
                loop: self.loop, password: login.password, maxMessageBytes: 1 << 20, logger: self.logger)
            probe.connection = server
            connection = server.connect(connectTimeout: timeout, maxMessageBytes: 1 << 20).map { server }
        }
        connection.flatMap { server -> EventLoopFuture<(NIODeadline, [[String?]])> in
            let sentAt = NIODeadline.now()
            return server.runInternalRows(Self.probeSQL).map { (sentAt, $0) }
        }.whenComplete { result in
            switch result {
            case .success(let (sentAt, rows)):
                guard let row = rows.first, row.count == 4 else {
                    promise.fail(TidegateError.serverUnavailable("unexpected answer to the health probe"))
                    return
                }
                probe.probeMs = Double((NIODeadline.now() - sentAt).nanoseconds) / 1e6
                probe.role = row[0] == "t" ? .replica : .primary
                probe.lsn = row[1].flatMap { LSN($0) }
                probe.receiveLSN = row[2].flatMap { LSN($0) }
                probe.replayLagSeconds = row[3].flatMap { Double($0) }.map { max(0, $0) }
                promise.succeed(sentAt)
            case .failure(let error):
                promise.fail(error)
            }
        }
        return promise.futureResult
    }

    /// Builds the view from the probes and hands it to every event loop.
    private func publish(config: TidegateConfig) {
        let now = NIODeadline.now()
        let draining = self.runtime.drainingNodes
        var view = TopologyView()
        self.version += 1
        view.version = self.version
        view.primaries = self.probes.filter { $0.up && $0.role == .primary }.map(\.name)
        let primaryLSN = view.primary.flatMap { name in self.probes.first { $0.name == name }?.lsn }
        if view.primary != nil { view.primaryProbe = self.primaryProbe }
        for probe in self.probes {
            var lagSeconds: Double?
            var lagBytes: UInt64?
            if probe.role == .replica, let replay = probe.lsn {
                if let primaryLSN {
                    lagBytes = primaryLSN.bytes(since: replay)
                    // The age of the oldest primary position this replica has not replayed yet.
                    if let missing = self.primaryHistory.first(where: { $0.lsn > replay }) {
                        lagSeconds = Double((now - missing.at).nanoseconds) / 1e9
                    } else {
                        lagSeconds = 0
                    }
                } else {
                    lagSeconds = probe.replayLagSeconds
                }
            } else if probe.role == .primary {
                lagSeconds = 0
                lagBytes = 0
            }
            var state: NodeSnapshot.State
            if !probe.up {
                state = .down
            } else if draining.contains(probe.name) {
                state = .draining
            } else if probe.role == .replica
                && ((lagSeconds ?? .infinity) * 1000 > Double(config.routing.maxLagMs)
                    || (config.routing.maxLagBytes > 0 && (lagBytes ?? .max) > UInt64(config.routing.maxLagBytes)))
            {
                state = .lagging
            } else {
                state = .up
            }
            view.nodes.append(
                NodeSnapshot(
                    name: probe.name, region: probe.region, role: probe.up ? probe.role : (probe.everUp ? probe.role : .unknown),
                    state: state, lsn: probe.lsn, lagSeconds: lagSeconds, lagBytes: lagBytes))
            view.details[probe.name] = TopologyView.NodeDetail(
                host: probe.endpoint.host, port: probe.endpoint.port, receiveLSN: probe.receiveLSN, probeMs: probe.probeMs,
                lastError: probe.lastError)
        }
        if view.splitBrain != self.reportedSplitBrain {
            self.reportedSplitBrain = view.splitBrain
            if view.splitBrain {
                self.logger.critical(
                    "split-brain: several nodes claim to be primary; writes are refused until one is demoted or removed",
                    metadata: ["nodes": "\(view.primaries.joined(separator: ", "))"])
            } else {
                self.logger.notice("split-brain resolved", metadata: ["primary": "\(view.primary ?? "none")"])
            }
        }
        self.runtime.publish(view)
    }
}
