import Cache
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import PostgresWire
import Prometheus
import ServiceLifecycle
import UnixSignals

/// The proxy as a service: listens for clients and for HTTP, reloads on SIGHUP, and on graceful shutdown
/// stops accepting, lets open transactions finish up to `shutdown_timeout_ms`, then closes.
public final class TidegateService: Service, Sendable {
    public let runtime: Runtime
    let group: MultiThreadedEventLoopGroup
    let registry: PrometheusCollectorRegistry
    let logger: Logger
    private let boundAddress = NIOLockedValueBox<SocketAddress?>(nil)

    public init(config: TidegateConfig, configPath: String?, overrides: [String: String], registry: PrometheusCollectorRegistry, logger: Logger) {
        self.runtime = Runtime(config: config, configPath: configPath, overrides: overrides, logger: logger)
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: config.threads)
        self.registry = registry
        self.logger = logger
    }

    /// The address clients connect to, once listening.
    public var localAddress: SocketAddress? { self.boundAddress.withLockedValue { $0 } }

    public func run() async throws {
        let config = self.runtime.config
        var cacheTier: CacheTier?
        if config.cache.enabled {
            let cache = config.cache
            var settings = RedisClient.Settings()
            settings.host = cache.redisHost
            settings.port = cache.redisPort
            settings.password = cache.redisPassword.isEmpty ? nil : cache.redisPassword
            settings.database = cache.redisDatabase
            settings.connections = cache.redisConnections
            settings.connectTimeoutMs = cache.redisConnectTimeoutMs
            settings.commandTimeoutMs = cache.redisCommandTimeoutMs
            let logger = self.logger
            let redis = RedisClient(
                settings: settings, group: self.group, logger: logger,
                onAvailabilityChange: { up in
                    if up {
                        logger.info("cache: Redis reachable", metadata: ["redis": "\(cache.redisHost):\(cache.redisPort)"])
                    } else {
                        logger.warning("cache: Redis unreachable; reads bypass the cache", metadata: ["redis": "\(cache.redisHost):\(cache.redisPort)"])
                    }
                })
            cacheTier = CacheTier(settings: cache, relations: Array(config.relations.values), redis: redis, logger: logger)
            self.runtime.cacheTier = cacheTier
        }
        for loop in self.group.makeIterator() {
            let runtime = self.runtime
            let logger = self.logger
            let reference = try await loop.submit {
                let shard = LoopShard(loop: loop, runtime: runtime, logger: logger)
                shard.start()
                return LoopShardReference(loop: loop, shard: NIOLoopBound(shard, eventLoop: loop))
            }.get()
            self.runtime.addShard(reference)
        }
        if let first = self.runtime.shards.first {
            let runtime = self.runtime
            let logger = self.logger
            try await first.loop.submit {
                let checker = HealthChecker(loop: first.loop, runtime: runtime, logger: logger)
                first.shard.value.healthChecker = checker
                checker.start()
                if let tier = runtime.cacheTier {
                    let listeners = Self.startListeners(tier: tier, runtime: runtime, loop: first.loop, logger: logger)
                    first.shard.value.cacheListeners = listeners
                    let metrics = runtime.metrics
                    let task = first.loop.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(100)) { _ in
                        for (database, listener) in listeners { tier.setListenerLag(database: database, lagMs: listener.lagMillis) }
                    }
                    let slow = first.loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
                        tier.housekeeping(on: first.loop)
                        tier.publish(to: metrics)
                    }
                    first.shard.value.cacheHousekeeping = [task, slow]
                }
            }.get()
        }
        let sslContext: NIOSSLContext?
        if config.listen.tlsEnabled {
            var tls = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(config.listen.tlsCertificate).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: config.listen.tlsPrivateKey, format: .pem)))
            tls.minimumTLSVersion = .tlsv12
            sslContext = try NIOSSLContext(configuration: tls)
        } else {
            sslContext = nil
        }
        let runtime = self.runtime
        let logger = self.logger
        let server = try await ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard let reference = runtime.shards.first(where: { $0.loop === channel.eventLoop }) else {
                        throw TidegateError.serverUnavailable("no shard for event loop")
                    }
                    let session = ClientSession(
                        runtime: runtime, shard: reference.shard.value, sslContext: sslContext,
                        remoteAddress: channel.remoteAddress?.description ?? "?", logger: logger)
                    try channel.pipeline.syncOperations.addHandler(session)
                }
            }
            .bind(host: config.listen.host, port: config.listen.port).get()
        self.boundAddress.withLockedValue { $0 = server.localAddress }
        self.logger.info(
            "Tidegate listening", metadata: ["address": "\(server.localAddress?.description ?? "?")", "pool.mode": "\(config.pool.mode.rawValue)"])

        var http: (any Channel)?
        if config.http.port > 0 {
            let registry = self.registry
            let readiness: @Sendable () -> Bool = { [runtime] in runtime.primaryReachable.load(ordering: .relaxed) }
            http = try await ServerBootstrap(group: self.group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.pipeline.configureHTTPServerPipeline().flatMapThrowing {
                        try channel.pipeline.syncOperations.addHandler(HTTPEndpointHandler(registry: registry, readiness: readiness))
                    }
                }
                .bind(host: config.http.host, port: config.http.port).get()
            self.logger.info("HTTP endpoint listening", metadata: ["address": "\(http?.localAddress?.description ?? "?")"])
        }

        try await withTaskCancellationOrGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    let signals = await UnixSignalsSequence(trapping: .sighup)
                    for await _ in signals {
                        do {
                            try await runtime.reload()
                        } catch {
                            logger.error("reload failed; keeping the previous configuration", metadata: ["error": "\(error)"])
                        }
                    }
                }
                group.addTask {
                    try? await server.closeFuture.get()
                }
                let maintenance = StorageMaintenance(runtime: runtime, logger: logger)
                group.addTask { await maintenance.run() }
                await group.next()
                group.cancelAll()
            }
        } onCancelOrGracefulShutdown: {
            logger.info("shutting down: no new clients; waiting for open transactions")
            server.close(promise: nil)
        }
        try? await http?.close()
        await self.drain()
        if let listeners = try? await self.runtime.shards.first?.loop.submit({ self.runtime.shards.first?.shard.value.cacheListeners ?? [] }).get() {
            for (_, listener) in listeners { try? await listener.shutdown().get() }
        }
        try? await cacheTier?.redis.shutdown().get()
        try await self.group.shutdownGracefully()
    }

    /// One replication listener per database of `cache.listener.databases`: writes that bypass Tidegate
    /// move the cache's versions; after each (re)connect everything is invalidated, since what happened
    /// while it was away is unknown.
    static func startListeners(tier: CacheTier, runtime: Runtime, loop: any EventLoop, logger: Logger) -> [(String, ReplicationListener)] {
        let config = runtime.config
        guard config.cache.listener.enabled else { return [] }
        let settings = config.cache.listener
        let login: (user: String, password: String?)?
        if !settings.user.isEmpty {
            let user = config.users[settings.user]
            login = (settings.user, user?.backendPassword ?? (user?.password.hasPrefix("SCRAM-SHA-256$") == true ? nil : user?.password))
        } else {
            login = config.healthLogin
        }
        guard let login else {
            logger.error("cache.listener: no login with a plain password; the cache serves no hits (set cache.listener.user)")
            return []
        }
        var relations: PgOutputDecoder.TrackedRelations = [:]
        for relation in config.relations.values where relation.cache {
            relations[relation.name] = (timeColumn: relation.timeColumn, instrumentColumn: relation.instrumentColumn)
        }
        return settings.databases.map { database in
            var listenerSettings = ReplicationListener.Settings()
            listenerSettings.database = database
            listenerSettings.user = login.user
            listenerSettings.password = login.password ?? ""
            listenerSettings.publication = settings.publication
            listenerSettings.slotPrefix = settings.slotPrefix
            listenerSettings.statusIntervalMs = settings.statusIntervalMs
            let listener = ReplicationListener(
                settings: listenerSettings, relations: relations,
                primary: { [runtime] in
                    let config = runtime.config
                    let name = runtime.topology.primary ?? (config.routes ? nil : config.nodes.first?.name)
                    return name.flatMap { config.node(named: $0)?.endpoint }
                },
                eventLoop: loop, logger: logger,
                apply: { commit in tier.apply(commit, database: database, on: loop) },
                restarted: { tier.replaceGeneration(on: loop) })
            tier.registerListener(database: database) { [listener] in listener.appliedLSN }
            listener.start()
            return (database, listener)
        }
    }

    /// Waits until no client holds a server connection (transactions finished) and no batch is waiting or
    /// committing, up to the deadline,
    /// then closes every client and server connection.
    private func drain() async {
        let deadline = ContinuousClock.now + .milliseconds(self.runtime.config.shutdownTimeoutMs)
        while ContinuousClock.now < deadline {
            let busy = (try? await self.runtime.gather { shard in
                shard.sessions.values.filter { $0.serverID != nil || $0.awaitsBatches }.count + (shard.batcher?.isIdle == false ? 1 : 0)
            }) ?? []
            if busy.reduce(0, +) == 0 { break }
            try? await Task.sleep(for: .milliseconds(50))
        }
        _ = try? await self.runtime.gather { shard in
            for session in shard.sessions.values {
                session.fatal(
                    ErrorFields(severity: "FATAL", sqlState: "57P01", message: "terminating connection due to administrator command"))
            }
            shard.stop()
        }
        try? await Task.sleep(for: .milliseconds(100))
    }
}
