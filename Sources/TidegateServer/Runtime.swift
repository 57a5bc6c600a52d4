import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization
import Topology

/// State shared by every event loop: the configuration (swapped on reload), the metrics, the cancel-key
/// registry, and each loop's shard. Hot paths read the configuration through one uncontended lock.
public final class Runtime: Sendable {
    private let configBox: NIOLockedValueBox<TidegateConfig>
    let configPath: String?
    let configOverrides: [String: String]
    let metrics = TidegateMetrics()
    let batchStats = BatchStatistics()
    let cancelKeys = CancelKeyRegistry()
    let clientCount = Atomic<Int>(0)
    let serverCount = Atomic<Int>(0)
    /// Whether the primary accepted a TCP connection at the last probe (for /readyz).
    let primaryReachable = Atomic<Bool>(false)
    let startedAt = NIODeadline.now()
    let logger: Logger
    private let shardsBox = NIOLockedValueBox([LoopShardReference]())
    private let cacheTierBox = NIOLockedValueBox<CacheTier?>(nil)
    /// The cache tier, when `cache.enabled` (set once at start, before any shard runs).
    var cacheTier: CacheTier? {
        get { self.cacheTierBox.withLockedValue { $0 } }
        set { self.cacheTierBox.withLockedValue { $0 = newValue } }
    }

    init(config: TidegateConfig, configPath: String?, overrides: [String: String], logger: Logger) {
        self.configBox = NIOLockedValueBox(config)
        self.configPath = configPath
        self.configOverrides = overrides
        self.logger = logger
    }

    var config: TidegateConfig { self.configBox.withLockedValue { $0 } }

    func replaceConfig(_ config: TidegateConfig) {
        self.configBox.withLockedValue { $0 = config }
        for reference in self.shards {
            reference.loop.execute { reference.shard.value.config = config }
        }
    }

    func node(named name: String) -> TidegateConfig.Node? {
        self.config.node(named: name)?.endpoint
    }

    // MARK: Topology

    private let topologyBox = NIOLockedValueBox(TopologyView())
    private let drainingBox = NIOLockedValueBox(Set<String>())
    /// Uptime (nanoseconds) of the last write any client made, for read-your-writes `global`.
    let lastWriteNanos = Atomic<Int64>(0)

    /// The last view the health checker published.
    var topology: TopologyView { self.topologyBox.withLockedValue { $0 } }

    /// Nodes an operator drained (DRAIN): they get no new work.
    var drainingNodes: Set<String> { self.drainingBox.withLockedValue { $0 } }

    /// Marks a node drained or not; the next published view shows it. Returns false for an unknown node.
    func setDraining(_ node: String, _ draining: Bool) -> Bool {
        guard self.config.node(named: node) != nil else { return false }
        self.drainingBox.withLockedValue { nodes in
            if draining { nodes.insert(node) } else { nodes.remove(node) }
        }
        // Apply at once rather than at the next probe round.
        var view = self.topology
        for index in view.nodes.indices where view.nodes[index].name == node {
            if draining && view.nodes[index].state != .down {
                view.nodes[index].state = .draining
            } else if !draining && view.nodes[index].state == .draining {
                view.nodes[index].state = .up
            }
        }
        view.version += 1
        self.publish(view)
        if draining {
            for reference in self.shards {
                reference.loop.execute { reference.shard.value.closeIdleConnections(node: node) }
            }
        }
        return true
    }

    /// Hands a new view to every event loop (and to the admin console and metrics).
    func publish(_ view: TopologyView) {
        let previous = self.topologyBox.withLockedValue { box in
            let previous = box
            box = view
            return previous
        }
        // Idle connections to a node that just went down are dead or about to be: close them rather
        // than hand them out.
        let wentDown = view.nodes.filter { node in
            node.state == .down && previous.nodes.contains { $0.name == node.name && $0.state != .down }
        }.map(\.name)
        self.primaryReachable.store(view.primary != nil || (!self.config.routes && view.nodes.first?.state == .up), ordering: .relaxed)
        self.metrics.topology(view)
        for reference in self.shards {
            reference.loop.execute {
                for node in wentDown { reference.shard.value.closeIdleConnections(node: node) }
                reference.shard.value.topologyChanged(view)
            }
        }
    }

    /// Notes a write (read-your-writes `global`).
    func noteWrite(at time: NIODeadline) {
        let nanos = Int64(time.uptimeNanoseconds)
        _ = self.lastWriteNanos.max(nanos, ordering: .relaxed)
    }

    var shards: [LoopShardReference] { self.shardsBox.withLockedValue { $0 } }

    // MARK: Pool sizes across event loops

    /// Server connections (open or opening) per pool, over every loop: pool.max_size is global.
    private let poolSizes = NIOLockedValueBox([PoolKey: Int]())
    /// Per pool, the loops whose clients wait for a connection they could not open (the pool was full).
    private let starvedLoops = NIOLockedValueBox([PoolKey: Set<ObjectIdentifier>]())

    /// Takes one connection of the pool's budget; false when the pool is at its maximum.
    func reserveConnection(_ key: PoolKey, maxSize: Int) -> Bool {
        self.poolSizes.withLockedValue { sizes in
            let size = sizes[key, default: 0]
            guard size < maxSize else { return false }
            sizes[key] = size + 1
            return true
        }
    }

    /// Gives one connection of the pool's budget back, and lets a starved loop use it.
    func releaseConnection(_ key: PoolKey) {
        self.poolSizes.withLockedValue { sizes in
            sizes[key] = max(0, sizes[key, default: 0] - 1)
        }
        self.wakeStarvedLoop(key)
    }

    func poolSize(_ key: PoolKey) -> Int { self.poolSizes.withLockedValue { $0[key, default: 0] } }

    func setStarved(_ key: PoolKey, loop: any EventLoop, _ starved: Bool) {
        let id = ObjectIdentifier(loop)
        self.starvedLoops.withLockedValue { loops in
            if starved { loops[key, default: []].insert(id) } else { loops[key]?.remove(id) }
        }
    }

    /// Whether clients on another loop wait for a connection of this pool.
    func otherLoopsStarved(_ key: PoolKey, except loop: any EventLoop) -> Bool {
        let id = ObjectIdentifier(loop)
        return self.starvedLoops.withLockedValue { loops in
            guard let set = loops[key] else { return false }
            return set.contains { $0 != id }
        }
    }

    /// A connection of the pool's budget came free (a server connection closed, which is rare): every
    /// loop with waiting clients may now open one.
    private func wakeStarvedLoop(_ key: PoolKey) {
        for reference in self.shards {
            reference.loop.execute { reference.shard.value.existingPool(key)?.growIfNeeded() }
        }
    }

    /// Asks the other loops to close one idle connection of this pool, so a starved loop can open one.
    func reclaimIdleConnection(_ key: PoolKey, for loop: any EventLoop, requesterSize: Int?) {
        for reference in self.shards where reference.loop !== loop {
            reference.loop.execute {
                _ = reference.shard.value.existingPool(key)?.closeOneIdle(requesterSize: requesterSize)
            }
        }
    }

    func addShard(_ reference: LoopShardReference) {
        self.shardsBox.withLockedValue { $0.append(reference) }
    }

    /// Runs `body` on every loop's shard and collects the results.
    /// An event loop for work of no particular client (admin commands on the cache).
    var anyLoop: any EventLoop { self.shards.first?.loop ?? MultiThreadedEventLoopGroup.singleton.next() }

    func gather<T: Sendable>(_ body: @escaping @Sendable (LoopShard) -> T) async throws -> [T] {
        var results: [T] = []
        for reference in self.shards {
            let value = try await reference.loop.submit { body(reference.shard.value) }.get()
            results.append(value)
        }
        return results
    }
}

/// A loop's shard, reachable from other threads only by submitting work to its loop.
struct LoopShardReference: Sendable {
    let loop: any EventLoop
    let shard: NIOLoopBound<LoopShard>
}

/// Maps the cancel keys Tidegate issues to the client sessions holding them.
final class CancelKeyRegistry: Sendable {
    struct Entry: Sendable {
        var secretKey: Int32
        var loop: any EventLoop
        var session: NIOLoopBound<ClientSession>
    }

    private let entries = NIOLockedValueBox([Int32: Entry]())
    private let nextProcessID = NIOLockedValueBox(Int32(10_000))

    /// Issues a (process id, secret key) pair for a session.
    func register(_ session: ClientSession, loop: any EventLoop) -> (Int32, Int32) {
        let secret = Int32.random(in: Int32.min...Int32.max)
        let bound = NIOLoopBound(session, eventLoop: loop)
        return self.entries.withLockedValue { entries in
            var pid: Int32 = 0
            self.nextProcessID.withLockedValue { next in
                repeat {
                    next = next == Int32.max ? 10_000 : next + 1
                } while entries[next] != nil
                pid = next
            }
            entries[pid] = Entry(secretKey: secret, loop: loop, session: bound)
            return (pid, secret)
        }
    }

    func unregister(_ processID: Int32) {
        _ = self.entries.withLockedValue { $0.removeValue(forKey: processID) }
    }

    /// The entry for a cancel request, only if the secret matches.
    func lookup(processID: Int32, secretKey: Int32) -> Entry? {
        self.entries.withLockedValue { entries in
            guard let entry = entries[processID], entry.secretKey == secretKey else { return nil }
            return entry
        }
    }
}

extension Runtime {
    /// Re-reads the configuration file. Listen addresses and thread count apply at the next start; users,
    /// limits and pool settings apply to new work at once; connected clients are not dropped.
    func reload() async throws {
        guard let path = self.configPath else { return }
        let config = try await TidegateConfig.load(path: path, overrides: self.configOverrides)
        let old = self.config
        var merged = config
        merged.listen.host = old.listen.host
        merged.listen.port = old.listen.port
        merged.http = old.http
        merged.threads = old.threads
        self.replaceConfig(merged)
        for reference in self.shards {
            reference.loop.execute { reference.shard.value.reloaded() }
        }
        self.logger.info("configuration reloaded", metadata: ["path": "\(path)"])
    }
}
