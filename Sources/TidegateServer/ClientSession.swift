import Foundation
import Cache
import DequeModule
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresWire
import SQLAnalysis
import Topology

/// One client connection: decodes its bytes, authenticates it, lends it server connections (for a
/// transaction or for the session), rewrites prepared-statement names so they follow the client from
/// one server connection to the next, and forwards everything else unchanged. Lives on one event loop.
// @unchecked Sendable: confined to one event loop; every access happens on that loop (callbacks of
// futures created on it run there too), so no two threads ever touch it.
final class ClientSession: ChannelInboundHandler, ServerConnectionOwner, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Phase {
        case startup
        case authenticating(ClientAuthStateMachine)
        /// Authenticated; waiting for the first server connection to report parameters.
        case loggingIn
        case ready
        case admin(AdminSession)
        case closing
    }

    /// A statement the client prepared, as Tidegate knows it.
    struct Statement {
        var info: StatementInfo
    }

    static let sessionIDs = IDGenerator()

    let id: Int
    let runtime: Runtime
    let shard: LoopShard
    var logger: Logger
    private var context: ChannelHandlerContext?
    private var inbound = ByteBuffer()
    private var startupDecoder = StartupPacketDecoder()
    private var frameDecoder: PostgresFrameDecoder
    private(set) var phase = Phase.startup
    private let sslContext: NIOSSLContext?
    private(set) var tls = false
    private var encryptionNegotiated = false

    // Who the client is.
    private(set) var userName = ""
    private(set) var database = ""
    private(set) var applicationName = ""
    private(set) var processID: Int32 = 0
    private var secretKey: Int32 = 0
    let connectedAt = NIODeadline.now()
    let remoteAddress: String

    // The server side.
    private(set) var server: ServerConnection?
    private var pool: ServerPool?
    private var checkoutInProgress = false
    private var pending = Deque<PostgresFrame>()
    private var pendingBytes = 0
    private var readingPaused = false
    private var tracker = ResponseTracker()
    private var events: [ResponseTracker.Event] = []

    // Session state that follows the client.
    private var statements: [String: Statement] = [:]
    private var unnamed: StatementInfo?
    private var portals: [String: SessionEffect] = [:]
    private var settings = SessionSettings() {
        didSet { self.cachedFingerprint = nil }
    }
    /// The settings from the startup packet: what RESET returns to, as on a direct connection.
    private var startupSettings = SessionSettings()
    private var pendingEffects: [SessionEffect] = [] {
        didSet { self.cachedFingerprint = nil }
    }
    private var cachedFingerprint: String?

    /// Every setting in force (made or pending) as one string. It is part of a statement's server-side
    /// name: settings such as search_path, standard_conforming_strings, TimeZone or DateStyle change what
    /// a statement's text means when it is parsed, so a statement parsed under other settings must not be
    /// reused.
    private var settingsFingerprint: String {
        if let cached = self.cachedFingerprint { return cached }
        var parts = self.settings.statements
        for effect in self.pendingEffects { parts.append("\(effect)") }
        var hash = FNV1a64()
        for part in parts {
            for byte in part.utf8 { hash.add(byte) }
            hash.add(1)
        }
        let fingerprint = parts.isEmpty ? "" : String(hash.value, radix: 36)
        self.cachedFingerprint = fingerprint
        return fingerprint
    }
    /// A RESET through the extended protocol returned startup settings to the server's defaults: at the
    /// next ReadyForQuery, Tidegate sets them back to the client's startup values before answering.
    private var restoreStartupAtReady = false
    /// The attached server's settings no longer match the client's (after DISCARD ALL): replay on next use.
    private var serverSettingsUnknown = false
    private var reportedParameters = ParameterSet()
    private(set) var pinReason: String?
    private var copyIn = false
    private(set) var transactionStatus = TransactionStatus.idle
    private var discardUntilSync = false
    private var requestStarts = Deque<(NIODeadline, StatementClass)>()
    private var currentClass = StatementClass.utility
    private var startupTimer: Scheduled<Void>?
    private var idleTimer: Scheduled<Void>?
    private var counted = false
    private(set) var queries = 0

    // Routing (when the configuration has several nodes).
    /// How the attached server connection was chosen.
    struct AttachedRoute {
        var node: String
        /// Chosen for a read-only statement (on a replica, or on the primary as the fallback).
        var readOnly: Bool
        var onReplica: Bool
        /// The attachment runs a transaction declared READ ONLY: everything in it stays on this node.
        var readOnlyTransaction: Bool
        /// A statement that is not read-only ran on it (read-your-writes).
        var wrote = false
    }

    /// The state of a read that may still be retried on another node: nothing has reached the client.
    struct RetryWindow {
        var frames: [PostgresFrame] = []
        var statements: [String: Statement]
        var unnamed: StatementInfo?
        var portals: [String: SessionEffect]
        var requestStarts: Deque<(NIODeadline, StatementClass)>
        var currentClass: StatementClass
        var discardUntilSync: Bool
    }

    private(set) var region = ""
    /// `-c tidegate.route=primary|replica`: the client's standing routing preference.
    private var routePreference: RoutingHint.Route?
    private(set) var route: AttachedRoute?
    /// Nodes that failed the current request (its read is retried elsewhere).
    private var excludedNodes: Set<String> = []
    private var retry: RetryWindow?
    /// Output held back while a read may still be retried.
    private var held: [ByteBuffer] = []
    private var heldBytes = 0
    /// The server sent part of the answer itself (a row, a command tag, ReadyForQuery…): what is held
    /// goes out at the end of this receive buffer and the read can no longer be retried.
    private var retryAnswered = false
    /// Messages that come before an answer and are held while a read may be retried.
    static let heldBeforeAnswer: Set<UInt8> = Set("123TtnSN".utf8)
    /// Past this many held bytes, the window closes (the hold stays bounded).
    static let retryHoldLimit = 65_536
    /// A statement that must not run on the attached replica is queued until the replica is released.
    private var holdForReroute = false
    /// The next queued message is the one the attached route was chosen for.
    private var routedFramePending = false
    /// The messages sent on the attached server so far end with a Sync or a simple Query.
    private var atSyncBoundary = true
    /// The next route goes to the primary whatever the statement (a batch moved off a replica).
    private var forcePrimary = false
    /// Read-your-writes: when this session last wrote, and the primary position known to cover it.
    private var lastWriteAt: NIODeadline?
    private var writeLSN: LSN?
    // The cache (when `cache.enabled`).
    /// A lookup is out: client messages wait in `cacheQueue`.
    private var cacheLookupActive = false
    private var cacheQueue = Deque<PostgresFrame>()
    private var cacheQueueBytes = 0
    /// Extended-protocol messages held until their Sync decides whether the cache can answer them.
    private var cacheCandidate: [PostgresFrame] = []
    /// A miss on its way: its ticket, the reply so far, and the topology as it was before it was sent.
    private var cacheFill: (ticket: FillTicket, capture: ReplyCapture, topology: TopologyView)?
    /// Cached relations written since the transaction began.
    private var cacheWrites: Set<String> = []
    /// Client output held until invalidations have reached Redis.
    private var ackHold: [ByteBuffer]?
    private var ackHoldCount = 0
    /// The session made state a cache key cannot describe (a temporary table, LISTEN, advisory locks…).
    private var cacheTainted = false
    private var cachedSettingsKey: (settings: String, parameters: UInt64, key: [UInt8])?
    /// Passed-through statement names (session pooling) whose text may write a cached relation.
    private var passthroughWrites: [String: Bool] = [:]
    // Insert coalescing (when a relation has `batch.enabled`).
    /// Extended-protocol messages held until their Sync decides whether the batcher takes them.
    private var batchCandidate: [PostgresFrame] = []
    /// The statement the held candidate executes.
    private var batchCandidateInsert: BatchableInsert?
    /// Statements with the batcher, in the order their replies are owed.
    private var batchReplies = Deque<BatchReply>()
    private var batchSequence = 0
    /// Client messages that wait for the statements with the batcher to be answered first.
    private var batchQueue = Deque<PostgresFrame>()
    private var batchQueueBytes = 0
    /// A statement waiting for room in the batcher (its relation's buffer was full).
    private var batchRoomWait: (item: BatchItem, key: BatchGroupKey, shape: InsertShape, frames: [PostgresFrame])?
    /// Waiting for the topology to offer a node (failover): until this deadline.
    private var waitDeadline: NIODeadline?
    private var waitTimer: Scheduled<Void>?
    private var waitReason = ""

    init(runtime: Runtime, shard: LoopShard, sslContext: NIOSSLContext?, remoteAddress: String, logger: Logger) {
        self.id = Self.sessionIDs.next()
        self.runtime = runtime
        self.shard = shard
        self.sslContext = sslContext
        self.remoteAddress = remoteAddress
        self.frameDecoder = PostgresFrameDecoder(maxMessageBytes: shard.config.limits.maxMessageBytes)
        self.mode = shard.config.pool.mode
        var logger = logger
        logger[metadataKey: "tidegate.session.id"] = "\(self.id)"
        self.logger = logger
    }

    /// This loop's copy of the configuration (no lock on the hot path).
    private var config: TidegateConfig { self.shard.config }
    /// The pooling mode is fixed for the life of the session, whatever a reload changes.
    private let mode: PoolMode

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelActive(context: ChannelHandlerContext) {
        self.shard.sessions[self.id] = self
        let count = self.runtime.clientCount.add(1, ordering: .relaxed).newValue
        self.counted = true
        self.runtime.metrics.clientConnections.record(count)
        let config = self.config
        if count > config.listen.maxClientConnections {
            self.runtime.metrics.clientConnectionsRefused.increment()
            self.fatal(ErrorFields(severity: "FATAL", sqlState: "53300", message: "sorry, too many clients already"))
            return
        }
        self.startupTimer = context.eventLoop.scheduleTask(in: .milliseconds(Int64(config.limits.startupTimeoutMs))) {
            [weak self] in
            guard let self else { return }
            switch self.phase {
            case .startup, .authenticating:
                self.fatal(
                    ErrorFields(
                        severity: "FATAL", sqlState: "08006",
                        message: "client did not complete login within \(config.limits.startupTimeoutMs) ms"))
            case .loggingIn, .ready, .admin, .closing:
                break
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.phase = .closing
        self.startupTimer?.cancel()
        self.idleTimer?.cancel()
        self.shard.sessions.removeValue(forKey: self.id)
        if self.counted {
            self.counted = false
            let count = self.runtime.clientCount.subtract(1, ordering: .relaxed).newValue
            self.runtime.metrics.clientConnections.record(count)
        }
        if self.processID != 0 { self.runtime.cancelKeys.unregister(self.processID) }
        self.waitTimer?.cancel()
        self.waitTimer = nil
        self.shard.topologyWaiters.removeValue(forKey: self.id)
        if let tier = self.shard.cacheTier {
            if let fill = self.cacheFill {
                self.cacheFill = nil
                tier.complete(fill.ticket, reply: nil, refusal: "client went away", on: context.eventLoop)
            }
            if !self.cacheWrites.isEmpty {
                // A write may have committed after the client left: move its relations anyway (the replication
                // listener sees it too).
                let tags = Set(self.cacheWrites.map { tier.tags.epochKey(database: self.database, relation: $0) })
                self.cacheWrites = []
                _ = tier.invalidate(tags, lsn: self.shard.topology.primaryProbe?.lsn, on: context.eventLoop)
            }
        }
        if let server = self.server, let pool = self.pool {
            self.server = nil
            self.routeEnded()
            if self.tracker.isIdle && self.transactionStatus == .idle && self.pinReason == nil && !self.copyIn {
                if self.mode == .session {
                    server.detach()
                    server.runInternal("DISCARD ALL").whenComplete { result in
                        server.prepared.removeAll()
                        server.appliedSettings = []
                        if case .failure = result { server.mustClose = true }
                        pool.release(server)
                    }
                } else {
                    server.appliedSettings = self.settings.statements
                    pool.release(server)
                }
            } else {
                pool.discard(server)
            }
        }
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        self.shard.bytesIn += buffer.readableBytes
        if self.inbound.readableBytes == 0 {
            self.inbound = buffer
        } else {
            self.inbound.writeBuffer(&buffer)
        }
        self.decode()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.server?.flush()
        context.flush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // Read from the server only while the client can take what it sends.
        self.server?.setAutoRead(context.channel.isWritable)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("client connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: Decoding

    private func decode() {
        do {
            while self.context != nil {
                switch self.phase {
                case .startup:
                    guard let packet = try self.startupDecoder.decode(buffer: &self.inbound) else { return self.compact() }
                    self.handleStartupPacket(packet)
                case .closing:
                    self.inbound.clear()
                    return
                case .authenticating, .loggingIn, .ready, .admin:
                    guard let frame = try self.frameDecoder.decode(buffer: &self.inbound) else { return self.compact() }
                    self.handleFrame(frame)
                }
            }
        } catch let error as WireError {
            self.runtime.metrics.protocolErrors.increment()
            self.fatal(ErrorFields(severity: "FATAL", sqlState: "08P01", message: error.message))
        } catch {
            self.fatal(ErrorFields(severity: "FATAL", sqlState: "08P01", message: "\(error)"))
        }
    }

    /// Shared by every idle session, so an idle client holds no receive buffer of its own.
    private static let emptyBuffer = ByteBuffer()

    private func compact() {
        if self.inbound.readableBytes == 0 {
            self.inbound = Self.emptyBuffer
        } else if self.inbound.readerIndex > 65536 {
            self.inbound.discardReadBytes()
        }
    }

    // MARK: Startup and authentication

    private func handleStartupPacket(_ packet: StartupPacket) {
        if self.encryptionNegotiated && (packet == .sslRequest || packet == .gssEncRequest) {
            // As PostgreSQL: only one encryption request per connection.
            return self.fatal(
                ErrorFields(
                    severity: "FATAL", sqlState: "0A000",
                    message: "unsupported frontend protocol 1234.\(packet == .sslRequest ? 5679 : 5680): server supports 3.0 to 3.0"))
        }
        switch packet {
        case .sslRequest, .gssEncRequest:
            self.encryptionNegotiated = true
        case .cancel, .startup:
            break
        }
        switch packet {
        case .sslRequest:
            if let sslContext = self.sslContext, let context = self.context, !self.tls {
                guard self.inbound.readableBytes == 0 else {
                    return self.fatal(
                        ErrorFields(severity: "FATAL", sqlState: "08P01", message: "received unencrypted data after SSL request"))
                }
                var reply = context.channel.allocator.buffer(capacity: 1)
                reply.writeInteger(UInt8(ascii: "S"))
                context.writeAndFlush(NIOAny(reply), promise: nil)
                do {
                    try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext), position: .first)
                    self.tls = true
                } catch {
                    self.fatal(ErrorFields(severity: "FATAL", sqlState: "08006", message: "TLS setup failed: \(error)"))
                }
            } else {
                self.writeByte(UInt8(ascii: "N"))
            }
        case .gssEncRequest:
            self.writeByte(UInt8(ascii: "N"))
        case .cancel(let processID, let secretKey):
            self.handleCancelRequest(processID: processID, secretKey: secretKey)
        case .startup(_, let minor, let parameters):
            self.handleStartup(minor: minor, parameters: parameters)
        }
    }

    private func writeByte(_ byte: UInt8) {
        guard let context = self.context else { return }
        var reply = context.channel.allocator.buffer(capacity: 1)
        reply.writeInteger(byte)
        context.writeAndFlush(NIOAny(reply), promise: nil)
    }

    private func handleStartup(minor: UInt16, parameters: [(String, String)]) {
        var unrecognized: [String] = []
        var settings = SessionSettings()
        for (name, value) in parameters {
            switch name {
            case "user": self.userName = value
            case "database": self.database = value
            case "replication":
                return self.fatal(
                    ErrorFields(severity: "FATAL", sqlState: "0A000", message: "Tidegate does not proxy replication connections"))
            case "options":
                guard let options = SessionSettings.parseOptions(value) else {
                    return self.fatal(
                        ErrorFields(severity: "FATAL", sqlState: "22023", message: "invalid command-line argument in options: \(value)"))
                }
                for (option, optionValue) in options {
                    if option.lowercased().hasPrefix("tidegate.") {
                        if let problem = self.applyTidegateOption(option.lowercased(), optionValue) {
                            return self.fatal(ErrorFields(severity: "FATAL", sqlState: "22023", message: problem))
                        }
                        continue
                    }
                    settings.apply(.set(name: option, statement: SessionSettings.setStatement(name: option, value: optionValue)))
                }
            default:
                if name.hasPrefix("_pq_.") {
                    unrecognized.append(name)
                } else if name.lowercased().hasPrefix("tidegate.") {
                    if let problem = self.applyTidegateOption(name.lowercased(), value) {
                        return self.fatal(ErrorFields(severity: "FATAL", sqlState: "22023", message: problem))
                    }
                } else {
                    if name == "application_name" { self.applicationName = value }
                    settings.apply(.set(name: name, statement: SessionSettings.setStatement(name: name, value: value)))
                }
            }
        }
        guard !self.userName.isEmpty else {
            return self.fatal(ErrorFields(severity: "FATAL", sqlState: "28000", message: "no PostgreSQL user name specified in startup packet"))
        }
        if self.database.isEmpty { self.database = self.userName }
        if self.region.isEmpty { self.region = self.config.region }
        self.settings = settings
        self.startupSettings = settings
        self.logger[metadataKey: "tidegate.user"] = "\(self.userName)"
        self.logger[metadataKey: "tidegate.database"] = "\(self.database)"
        if minor > 0 || !unrecognized.isEmpty, let context = self.context {
            var buffer = context.channel.allocator.buffer(capacity: 32)
            BackendEncoder.negotiateProtocolVersion(&buffer, newestVersion: 196_608, unrecognized: unrecognized)
            context.write(NIOAny(buffer), promise: nil)
        }
        let config = self.config
        var machine = ClientAuthStateMachine(userName: self.userName, user: config.users[self.userName], method: config.authMethod)
        let action = machine.start()
        self.phase = .authenticating(machine)
        self.runAuth(action)
    }

    /// `tidegate.region` and `tidegate.route` from the startup packet; returns a problem to report.
    private func applyTidegateOption(_ name: String, _ value: String) -> String? {
        let config = self.config
        switch name {
        case "tidegate.region":
            let names = config.regions.map(\.name)
            guard names.contains(value) || (names.isEmpty && value == config.region) else {
                return "tidegate.region \"\(value)\" is not a configured region (\(names.isEmpty ? config.region : names.joined(separator: ", ")))"
            }
            self.region = value
        case "tidegate.route":
            switch value.lowercased() {
            case "primary": self.routePreference = .primary
            case "replica": self.routePreference = .replica
            case "auto", "": self.routePreference = nil
            default: return "tidegate.route \"\(value)\" is not one of primary, replica, auto"
            }
        default:
            return "unrecognized Tidegate option \"\(name)\" (tidegate.region, tidegate.route)"
        }
        return nil
    }

    private func runAuth(_ action: ClientAuthStateMachine.Action) {
        switch action {
        case .send(let buffer):
            self.context?.writeAndFlush(NIOAny(buffer), promise: nil)
            if case .authenticating(let machine) = self.phase, machine.isAuthenticated { self.authenticated() }
        case .authenticated:
            self.authenticated()
        case .fail(let fields):
            self.runtime.metrics.authFailures.increment()
            self.logger.info("authentication failed", metadata: ["sqlstate": "\(fields.sqlState ?? "")"])
            self.fatal(fields)
        }
    }

    private func authenticated() {
        let config = self.config
        if self.database == TidegateConfig.adminDatabase {
            guard config.users[self.userName]?.admin == true else {
                return self.fatal(
                    ErrorFields(
                        severity: "FATAL", sqlState: "28000",
                        message: "user \"\(self.userName)\" is not allowed to use the admin console (set users.\(self.userName).admin: true)"))
            }
            self.startupTimer?.cancel()
            let admin = AdminSession(runtime: self.runtime)
            self.phase = .admin(admin)
            self.sendLoginCompletion(parameters: AdminSession.parameters)
            return
        }
        let pool = self.shard.pool(for: PoolKey(database: self.database, user: self.userName, node: self.loginNode))
        self.pool = pool
        if let parameters = pool.loginParameters[self.settings.statements] {
            // A client with the same startup settings logged in before: its parameters are known, so
            // the login needs no server connection (and succeeds while every one is busy).
            self.startupTimer?.cancel()
            self.phase = .ready
            self.sendLoginCompletion(parameters: parameters)
            return
        }
        self.phase = .loggingIn
        self.acquireServer()
        if config.routes {
            // Load the database's function volatility while the client logs in.
            _ = self.shard.functionCatalog(database: self.database, user: self.userName, primary: self.shard.topology.primary)
        }
    }

    private func sendLoginCompletion(parameters: [String: String]) {
        guard let context = self.context else { return }
        var parameters = parameters
        if self.shard.routes && parameters["in_hot_standby"] != nil {
            // Through Tidegate the database takes writes, whichever node answered the login; reads on
            // replicas do not change what the client was told.
            parameters["in_hot_standby"] = "off"
        }
        let (processID, secretKey) = self.runtime.cancelKeys.register(self, loop: context.eventLoop)
        self.processID = processID
        self.secretKey = secretKey
        var buffer = context.channel.allocator.buffer(capacity: 512)
        BackendEncoder.authenticationOK(&buffer)
        for (name, value) in parameters.sorted(by: { $0.key < $1.key }) {
            BackendEncoder.parameterStatus(&buffer, name: name, value: value)
        }
        self.reportedParameters = ParameterSet(parameters)
        BackendEncoder.backendKeyData(&buffer, processID: processID, secretKey: secretKey)
        BackendEncoder.readyForQuery(&buffer, status: .idle)
        context.writeAndFlush(NIOAny(buffer), promise: nil)
    }

    // MARK: Cancel

    private func handleCancelRequest(processID: Int32, secretKey: Int32) {
        // A cancel request connection gets no reply; it is closed once the request is passed on.
        self.phase = .closing
        if let entry = self.runtime.cancelKeys.lookup(processID: processID, secretKey: secretKey) {
            entry.loop.execute {
                entry.session.value.cancelRunningQuery()
            }
        }
        self.context?.close(promise: nil)
    }

    /// Sends a CancelRequest to the server running this client's query, if one is running. The server
    /// is kept out of the pool until the cancel request is done, so it cannot hit another client.
    func cancelRunningQuery() {
        guard let server = self.server, let pool = self.pool, !self.tracker.isIdle else { return }
        server.cancelsInFlight += 1
        let node = server.node
        let key = server.backendKey
        let loop = server.loop
        ClientBootstrap(group: loop).connectTimeout(.seconds(5)).connect(host: node.host, port: node.port).whenComplete { result in
            switch result {
            case .success(let channel):
                var buffer = channel.allocator.buffer(capacity: 16)
                FrontendEncoder.cancelRequest(&buffer, processID: key.processID, secretKey: key.secretKey)
                channel.writeAndFlush(buffer, promise: nil)
                // The server closes the connection once it has handled the request.
                let timeout = loop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
                channel.closeFuture.whenComplete { _ in
                    timeout.cancel()
                    pool.cancelFinished(server)
                }
            case .failure:
                pool.cancelFinished(server)
            }
        }
    }

    // MARK: Client messages

    private func handleFrame(_ frame: PostgresFrame) {
        switch self.phase {
        case .authenticating(var machine):
            let action = machine.received(frame)
            self.phase = .authenticating(machine)
            self.runAuth(action)
        case .admin(let admin):
            if let context = self.context {
                let close = admin.handle(frame, context: context, session: self)
                if close { self.phase = .closing; context.close(promise: nil) }
            }
        case .loggingIn:
            self.enqueue(frame)
        case .ready:
            self.idleTimer?.cancel()
            self.idleTimer = nil
            if frame.id == FrontendMessageID.terminate.rawValue {
                self.phase = .closing
                self.context?.close(promise: nil)
                return
            }
            if self.shard.batcher != nil && self.interceptForBatch(frame, fromQueue: false) { return }
            self.routeAfterBatch(frame)
        case .startup, .closing:
            break
        }
    }

    /// A client message of an authenticated session, on its way to a server connection.
    private func handleReadyFrame(_ frame: PostgresFrame) {
        if self.server == nil {
            // A lone Sync needs no server: answer it here.
            if frame.id == FrontendMessageID.sync.rawValue && self.pending.isEmpty && !self.checkoutInProgress {
                self.discardUntilSync = false
                var buffer = ByteBuffer()
                BackendEncoder.readyForQuery(&buffer, status: self.transactionStatus)
                self.writeClient(buffer)
                return
            }
            if frame.id == FrontendMessageID.flush.rawValue && self.pending.isEmpty { return }
            // The rest of an extended-protocol request that failed without a server (failover wait).
            if self.discardUntilSync && self.pending.isEmpty { return }
            if self.pending.isEmpty && !self.checkoutInProgress && self.waitTimer == nil && !self.shard.routes,
                let pool = self.pool, let server = self.takeServerImmediately(pool)
            {
                self.attach(server, route: nil)
                self.process(frame)
                return
            }
            self.enqueue(frame)
            self.acquireServer()
            return
        }
        if self.holdForReroute {
            self.enqueue(frame)
            return
        }
        if self.rerouteIfNeeded(frame, queued: false) { return }
        self.process(frame)
    }

    private func enqueue(_ frame: PostgresFrame) {
        self.pending.append(frame)
        self.pendingBytes += frame.raw.readableBytes
        if self.pendingBytes > self.shard.config.limits.clientBufferBytes && !self.readingPaused {
            self.readingPaused = true
            _ = self.context?.channel.setOption(ChannelOptions.autoRead, value: false)
        }
    }

    /// Sends one client message to the attached server, translating statement names.
    private func process(_ frame: PostgresFrame) {
        guard let server = self.server, let id = frame.frontendID else {
            return self.protocolViolation("unknown message type \(frame.id)")
        }
        if self.discardUntilSync && id != .sync { return }
        if self.retry != nil { self.retry?.frames.append(frame) }
        if self.route != nil && self.shard.routes {
            self.noteStatement(frame, id: id)
            self.atSyncBoundary = id == .sync || id == .query
        }
        do {
            switch id {
            case .query:
                var body = frame.body
                guard let queryBytes = body.readNullTerminatedBytes(), body.readableBytes == 0 else {
                    throw WireError.malformedMessage("Query")
                }
                let analysis = self.shard.queryAnalysis(queryBytes)
                self.noteCacheWrites(queryBytes)
                var rewrite = false
                for effect in analysis.effects {
                    switch effect {
                    case .pin(let reason): self.pin(reason)
                    case .reset, .resetAll: rewrite = rewrite || !self.startupSettings.isEmpty
                    case .deallocate(let name?): rewrite = rewrite || (self.renames && self.statements[name] != nil)
                    case .none, .set, .discardAll, .deallocate: break
                    }
                }
                self.unnamed = nil
                self.startRequest(analysis.statementClass)
                if rewrite {
                    let (rewritten, effects, hidden) = self.rewriteSessionStatements(
                        String(buffer: queryBytes), effects: analysis.effects)
                    var buffer = ByteBuffer()
                    FrontendEncoder.query(&buffer, rewritten)
                    server.write(buffer)
                    self.expect(.simpleQuery(effects: effects, next: 0, hidden: hidden))
                } else if let rewritten = self.shard.rollupRewrite(queryBytes, database: self.database, user: self.userName) {
                    // A time_bucket aggregate over ticks that the bars rollups answer (same result).
                    self.shard.rewrites += 1
                    var buffer = ByteBuffer()
                    FrontendEncoder.query(&buffer, String(buffer: rewritten))
                    server.write(buffer)
                    self.expect(.simpleQuery(effects: analysis.effects, next: 0))
                } else {
                    server.write(frame.raw)
                    self.expect(.simpleQuery(effects: analysis.effects, next: 0))
                }
            case .functionCall:
                self.cacheWrites.formUnion(self.shard.config.cachedRelations.keys)
                self.startRequest(.utility)
                server.write(frame.raw)
                self.expect(.simpleQuery(effects: [], next: 0))
            case .parse:
                try self.processParse(frame, server: server)
            case .bind:
                try self.processBind(frame, server: server)
            case .describe:
                let describe = try FrontendMessage.describe(frame)
                if describe.kind == UInt8(ascii: "S"), let info = self.lookup(describe.name) {
                    self.ensurePrepared(info, on: server)
                    var buffer = ByteBuffer()
                    FrontendEncoder.describe(&buffer, kind: describe.kind, name: info.serverName)
                    server.write(buffer)
                } else {
                    server.write(frame.raw)
                }
                self.expect(.describe)
            case .execute:
                let execute = try FrontendMessage.execute(frame)
                let effect = self.portals[execute.portalName] ?? .none
                switch effect {
                case .pin(let reason): self.pin(reason)
                case .reset(let name): if self.startupSettings.statement(for: name) != nil { self.restoreStartupAtReady = true }
                case .resetAll, .discardAll: if !self.startupSettings.isEmpty { self.restoreStartupAtReady = true }
                case .none, .set, .deallocate: break
                }
                server.write(frame.raw)
                self.expect(.execute(effect: effect))
            case .close:
                let close = try FrontendMessage.describe(frame)
                if close.kind == UInt8(ascii: "S") && self.renames {
                    if close.name.isEmpty { self.unnamed = nil } else { self.statements.removeValue(forKey: close.name) }
                    var buffer = ByteBuffer()
                    BackendEncoder.simple(&buffer, .closeComplete)
                    self.expect(.synthesized(buffer, isError: false))
                } else {
                    if close.kind == UInt8(ascii: "P") { self.portals.removeValue(forKey: close.name) }
                    server.write(frame.raw)
                    self.expect(.close(swallow: false))
                }
            case .sync:
                self.discardUntilSync = false
                self.startRequest(self.currentClass)
                server.write(frame.raw)
                self.expect(.sync)
            case .flush:
                server.write(frame.raw)
                // The client waits for what is owed so far: nothing may stay held back.
                if self.retry != nil { self.closeRetryWindow() }
            case .copyData, .copyDone, .copyFail:
                server.write(frame.raw)
            case .terminate:
                self.phase = .closing
                self.context?.close(promise: nil)
            case .password:
                self.protocolViolation("unexpected password message")
            }
        } catch let error as WireError {
            self.protocolViolation(error.message)
        } catch {
            self.protocolViolation("\(error)")
        }
    }

    /// On a direct connection RESET returns a setting to the value the client gave at startup; on a
    /// pooled server connection it would return to the server's default. So each RESET of a startup
    /// setting is followed by a SET to the startup value, whose CommandComplete the client never sees.
    /// PostgreSQL reports a changed setting only at the end of the query string, so the client sees no
    /// ParameterStatus for the round trip either.
    ///
    /// `DEALLOCATE name` of a statement the client prepared through the protocol names the statement
    /// under its server-side name.
    private func rewriteSessionStatements(
        _ query: String, effects: [SessionEffect]
    ) -> (String, [SessionEffect], [Bool]) {
        var parts: [String] = []
        var newEffects: [SessionEffect] = []
        var hidden: [Bool] = []
        for (statement, effect) in zip(SQLLexer.statements(in: query), effects) {
            if case .deallocate(let name?) = effect, self.renames, let info = self.statements[name]?.info {
                parts.append("DEALLOCATE \"\(info.serverName)\"")
            } else {
                parts.append(statement.text)
            }
            newEffects.append(effect)
            hidden.append(false)
            var restore: [(String, String)] = []
            switch effect {
            case .reset(let name):
                if let statement = self.startupSettings.statement(for: name) { restore.append((name, statement)) }
            case .resetAll:
                restore = self.startupSettings.entries.map { ($0.name, $0.statement) }
            case .none, .set, .discardAll, .pin, .deallocate:
                break
            }
            for (name, statement) in restore {
                parts.append(statement)
                newEffects.append(.set(name: name, statement: statement))
                hidden.append(true)
            }
        }
        return (parts.joined(separator: ";\n"), newEffects, hidden)
    }

    /// Whether statement names are translated (transaction pooling) or passed through (session pooling).
    private var renames: Bool { self.mode == .transaction }

    private func lookup(_ name: String) -> StatementInfo? {
        guard self.renames else { return nil }
        if name.isEmpty { return self.unnamed }
        return self.statements[name]?.info
    }

    private func processParse(_ frame: PostgresFrame, server: ServerConnection) throws {
        let parse = try FrontendMessage.parse(frame)
        let renameUnnamed = parse.statementName.isEmpty && self.shard.config.pool.prepareUnnamed
        guard self.renames && (!parse.statementName.isEmpty || renameUnnamed) else {
            if parse.statementName.isEmpty { self.unnamed = nil }
            let info = self.shard.statementInfo(
                query: parse.queryBytes, parameterTypes: parse.parameterTypes, searchPath: nil, database: self.database,
                user: self.userName)
            self.currentClass = info.statementClass
            self.noteEffect(info.effect, portal: nil)
            self.noteCacheWrites(info.clientQuery)
            self.passthroughWrites[parse.statementName] = self.shard.cacheTier != nil
                && self.shard.cacheWriteEffect(info.clientQuery, database: self.database, user: self.userName) != .none
            if info.rewritten {
                self.shard.rewrites += 1
                var buffer = ByteBuffer()
                FrontendEncoder.parse(&buffer, name: parse.statementName, queryBytes: info.query, parameterTypes: info.parameterTypes)
                server.write(buffer)
            } else {
                server.write(frame.raw)
            }
            self.expect(.parse(serverName: nil, clientName: nil, swallow: false))
            return
        }
        let info = self.shard.statementInfo(
            query: parse.queryBytes, parameterTypes: parse.parameterTypes, searchPath: self.settingsFingerprint,
            database: self.database, user: self.userName)
        self.currentClass = info.statementClass
        if !parse.statementName.isEmpty && self.statements[parse.statementName] != nil {
            var buffer = ByteBuffer()
            BackendEncoder.errorResponse(
                &buffer,
                ErrorFields(severity: "ERROR", sqlState: "42P05", message: "prepared statement \"\(parse.statementName)\" already exists"))
            self.discardUntilSync = true
            self.expect(.synthesized(buffer, isError: true))
            return
        }
        if parse.statementName.isEmpty {
            self.unnamed = info
        } else {
            self.statements[parse.statementName] = Statement(info: info)
        }
        if server.touchPrepared(info.serverName) {
            var buffer = ByteBuffer()
            BackendEncoder.simple(&buffer, .parseComplete)
            self.expect(.synthesized(buffer, isError: false))
        } else {
            self.evictIfNeeded(server)
            var buffer = ByteBuffer()
            FrontendEncoder.parse(&buffer, name: info.serverName, queryBytes: info.query, parameterTypes: info.parameterTypes)
            server.write(buffer)
            server.prepared[info.serverName] = server.useTick
            self.expect(.parse(serverName: info.serverName, clientName: parse.statementName, swallow: false))
        }
    }

    private func processBind(_ frame: PostgresFrame, server: ServerConnection) throws {
        let bind = try FrontendMessage.bind(frame)
        if let info = self.lookup(bind.statementName) {
            self.ensurePrepared(info, on: server)
            server.write(FrontendMessage.rewriteBind(frame, bind, statementName: info.serverName).raw)
            // Rewritten executions are counted here: a statement is parsed once and bound many times.
            if info.rewritten { self.shard.rewrites += 1 }
            self.noteCacheWrites(info.clientQuery)
            self.currentClass = info.statementClass
            self.noteEffect(info.effect, portal: bind.portalName)
        } else {
            if !self.renames || (bind.statementName.isEmpty && !self.shard.config.pool.prepareUnnamed) {
                // Statement analysis for passthrough names happened at Parse.
            }
            server.write(frame.raw)
            if self.passthroughWrites[bind.statementName] == true {
                self.cacheWrites.formUnion(self.shard.config.cachedRelations.keys)
            }
            self.portals[bind.portalName] = self.portals[bind.portalName] ?? SessionEffect.none
        }
        self.expect(.bind)
    }

    private func noteEffect(_ effect: SessionEffect, portal: String?) {
        if let portal { self.portals[portal] = effect }
    }

    /// Injects a Parse when the server connection lacks the statement (the client prepared it on
    /// another connection); its ParseComplete is swallowed.
    private func ensurePrepared(_ info: StatementInfo, on server: ServerConnection) {
        if server.touchPrepared(info.serverName) { return }
        self.evictIfNeeded(server)
        var buffer = ByteBuffer()
        FrontendEncoder.parse(&buffer, name: info.serverName, queryBytes: info.query, parameterTypes: info.parameterTypes)
        server.write(buffer)
        server.prepared[info.serverName] = server.useTick
        self.expect(.parse(serverName: info.serverName, clientName: nil, swallow: true))
    }

    /// Keeps the number of statements prepared on a server connection bounded (least recently used
    /// first); the Close is injected and its CloseComplete swallowed.
    private func evictIfNeeded(_ server: ServerConnection) {
        let limit = self.shard.config.pool.maxPreparedPerServer
        guard server.prepared.count >= limit, let victim = server.prepared.min(by: { $0.value < $1.value })?.key else { return }
        server.prepared.removeValue(forKey: victim)
        var buffer = ByteBuffer()
        FrontendEncoder.close(&buffer, kind: UInt8(ascii: "S"), name: victim)
        server.write(buffer)
        self.expect(.close(swallow: true))
    }

    private func pin(_ reason: String) {
        self.cacheTainted = true
        guard self.pinReason == nil, self.mode == .transaction else { return }
        self.pinReason = reason
        self.logger.debug("client pinned to its server connection", metadata: ["reason": "\(reason)"])
    }

    private func startRequest(_ statementClass: StatementClass) {
        self.requestStarts.append((.now(), statementClass))
    }

    private func expect(_ expectation: ResponseTracker.Expectation) {
        self.events.removeAll(keepingCapacity: true)
        self.tracker.expect(expectation, events: &self.events)
        self.handleEvents()
    }

    // MARK: Server messages

    /// Server messages forwarded as they are, held back to go out as one slice of the server's receive
    /// buffer: (buffer, start, end).
    private var run: (buffer: ByteBuffer, start: Int, end: Int)?

    /// Writes the held-back run of forwarded server messages. Called before any other write to the
    /// client, so everything goes out in order.
    private func flushRun() {
        guard let run = self.run else { return }
        self.run = nil
        if let slice = run.buffer.getSlice(at: run.start, length: run.end - run.start) {
            self.writeClient(slice)
        }
    }

    /// Writes to the client, or holds the bytes back while a read may still be retried.
    private func writeClient(_ buffer: ByteBuffer) {
        if self.retry != nil {
            self.heldBytes += buffer.readableBytes
            self.held.append(buffer)
        } else if self.ackHold != nil {
            self.ackHold!.append(buffer)
        } else {
            self.context?.write(NIOAny(buffer), promise: nil)
        }
    }

    func serverBufferDone(_ server: ServerConnection) {
        self.flushRun()
        // The server answered: what it sent goes to the client, and the read can no longer be retried.
        if self.retry != nil && (self.retryAnswered || self.heldBytes > Self.retryHoldLimit) { self.closeRetryWindow() }
    }

    func serverFrame(_ frame: PostgresFrame, in buffer: ByteBuffer, at offset: Int, from server: ServerConnection) {
        guard self.context != nil else { return }
        if self.retry != nil && frame.id == BackendMessageID.errorResponse.rawValue, let node = self.route?.node,
            let fields = try? BackendMessage.errorFields(frame), self.isRetryable(fields)
        {
            self.logger.info(
                "read failed before anything reached the client; retrying on another node",
                metadata: ["node": "\(node)", "sqlstate": "\(fields.sqlState ?? "")", "error": "\(fields.message ?? "")"])
            // A replica shutting down (fast shutdown sends 57P01 to every backend): avoid it at once.
            if self.route?.onReplica == true && fields.severity == "FATAL" && fields.sqlState?.hasPrefix("57P") == true {
                self.shard.markSuspect(node)
            }
            return self.retryRead(failedNode: node)
        }
        self.events.removeAll(keepingCapacity: true)
        var output = self.tracker.received(frame, events: &self.events)
        if self.restoreStartupAtReady && frame.id == BackendMessageID.readyForQuery.rawValue && self.tracker.isIdle
            && (try? BackendMessage.readyForQuery(frame)) != .failed
        {
            // Hold this ReadyForQuery back: the restore's own ReadyForQuery (same status) answers instead.
            self.restoreStartupAtReady = false
            output = .swallow
            let statements = self.startupSettings.entries
            var buffer = ByteBuffer()
            FrontendEncoder.query(&buffer, statements.map(\.statement).joined(separator: ";\n"))
            server.write(buffer)
            server.flush()
            self.startRequest(.set)
            var restoreEvents: [ResponseTracker.Event] = []
            self.tracker.expect(
                .simpleQuery(
                    effects: statements.map { .set(name: $0.name, statement: $0.statement) }, next: 0,
                    hidden: statements.map { _ in true }), events: &restoreEvents)
        } else if self.restoreStartupAtReady && frame.id == BackendMessageID.readyForQuery.rawValue {
            self.restoreStartupAtReady = false
        }
        if case .forward = output {
            if self.retry != nil && !Self.heldBeforeAnswer.contains(frame.id) { self.retryAnswered = true }
            self.shard.bytesOut += frame.raw.readableBytes
            if frame.id == BackendMessageID.parameterStatus.rawValue,
                let (name, value) = try? BackendMessage.parameterStatus(frame)
            {
                self.reportedParameters[name] = value
            } else if frame.id == BackendMessageID.errorResponse.rawValue {
                self.shard.errors += 1
                if let sqlState = try? BackendMessage.errorFields(frame).sqlState { self.runtime.metrics.error(sqlState: sqlState) }
            }
            if self.cacheFill != nil { self.cacheFill!.capture.add(frame) }
            let end = offset + frame.raw.readableBytes
            if let run = self.run, run.end == offset {
                self.run = (run.buffer, run.start, end)
            } else {
                self.flushRun()
                self.run = (buffer, offset, end)
            }
        } else {
            self.flushRun()
        }
        self.handleEvents()
    }

    private func handleEvents() {
        guard !self.events.isEmpty else { return }
        var index = 0
        defer { self.events.removeAll(keepingCapacity: true) }
        while index < self.events.count {
            let event = self.events[index]
            index += 1
            switch event {
            case .emit(let buffer):
                self.flushRun()
                if self.cacheFill != nil { self.cacheFill!.capture.add(buffer) }
                self.writeClient(buffer)
            case .parseSucceeded:
                break
            case .parseFailed(let serverName, let clientName):
                if let serverName { self.server?.prepared.removeValue(forKey: serverName) }
                if let clientName {
                    if clientName.isEmpty { self.unnamed = nil } else { self.statements.removeValue(forKey: clientName) }
                }
            case .effectCompleted(let effect, let tag):
                self.effectCompleted(effect, tag: tag)
            case .readyForQuery(let status):
                if self.cacheFill != nil { self.finishCacheFill(status) }
                if status == .idle && !self.cacheWrites.isEmpty { self.invalidateCacheWrites() }
                self.readyForQuery(status)
            case .copyIn:
                self.copyIn = true
            case .copyDone:
                self.copyIn = false
            case .evictionSkipped:
                self.server?.mustClose = true
            }
        }
    }

    private func effectCompleted(_ effect: SessionEffect, tag: String) {
        self.queries += 1
        switch effect {
        case .set, .reset, .resetAll:
            self.pendingEffects.append(effect)
        case .discardAll:
            // The server connection is back at its defaults; the client is back at its startup settings.
            self.pendingEffects.append(effect)
            for (name, statement) in self.startupSettings.entries {
                self.pendingEffects.append(.set(name: name, statement: statement))
            }
            self.serverSettingsUnknown = true
            self.server?.prepared.removeAll()
            self.statements.removeAll()
            self.unnamed = nil
        case .deallocate(let name):
            // Prepared statements are not transactional: gone at once.
            if let name {
                if let info = self.statements.removeValue(forKey: name)?.info {
                    self.server?.prepared.removeValue(forKey: info.serverName)
                }
            } else {
                self.statements.removeAll()
                self.server?.prepared.removeAll()
            }
        case .none, .pin:
            break
        }
        switch tag {
        case "COMMIT":
            self.applyPendingEffects()
        case "ROLLBACK":
            self.pendingEffects.removeAll()
        default:
            break
        }
    }

    private func applyPendingEffects() {
        for effect in self.pendingEffects { self.settings.apply(effect) }
        self.pendingEffects.removeAll()
    }

    private func readyForQuery(_ status: TransactionStatus) {
        let previous = self.transactionStatus
        self.transactionStatus = status
        if let (start, statementClass) = self.requestStarts.popFirst() {
            let nanos = (NIODeadline.now() - start).nanoseconds
            self.shard.queries += 1
            self.shard.queryNanos += nanos
            self.runtime.metrics.query(statementClass, nanoseconds: nanos)
        }
        switch status {
        case .idle:
            if previous != .idle { self.shard.transactions += 1 } else { self.shard.transactions += 1 }
            self.applyPendingEffects()
            self.releaseServerIfDone()
        case .inTransaction, .failed:
            let timeout = self.shard.config.limits.idleInTransactionTimeoutMs
            if timeout > 0, self.tracker.isIdle, let loop = self.context?.eventLoop {
                self.idleTimer?.cancel()
                self.idleTimer = loop.scheduleTask(in: .milliseconds(Int64(timeout))) { [weak self] in
                    self?.fatal(
                        ErrorFields(
                            severity: "FATAL", sqlState: "25P03",
                            message: "terminating connection due to idle-in-transaction timeout"))
                }
            }
        }
    }

    /// In transaction pooling, the server goes back to the pool when the transaction is over and
    /// nothing more is owed.
    private func releaseServerIfDone() {
        guard self.mode == .transaction, self.pinReason == nil, self.tracker.isIdle, self.pending.isEmpty || self.holdForReroute,
            !self.copyIn, self.transactionStatus == .idle, let server = self.server, let pool = self.pool
        else { return }
        if case .ready = self.phase {} else { return }
        self.flushRun()
        if self.retry != nil { self.closeRetryWindow() }
        server.flush()
        self.context?.flush()
        server.appliedSettings = self.serverSettingsUnknown ? ["-- reset by DISCARD ALL"] : self.settings.statements
        self.serverSettingsUnknown = false
        server.ownerDescription = ""
        self.server = nil
        self.routeEnded()
        self.portals.removeAll(keepingCapacity: true)
        pool.release(server)
        if self.holdForReroute {
            self.holdForReroute = false
            self.acquireServer()
        }
    }

    func serverReadComplete(_ server: ServerConnection) {
        self.flushRun()
        self.context?.flush()
    }

    func serverWritabilityChanged(_ server: ServerConnection, writable: Bool) {
        _ = self.context?.channel.setOption(ChannelOptions.autoRead, value: writable && !self.readingPaused)
    }

    func serverClosed(_ server: ServerConnection) {
        guard server === self.server else { return }
        if self.retry != nil, let node = self.route?.node {
            self.logger.info("server connection closed before a read was answered; retrying on another node", metadata: ["node": "\(node)"])
            return self.retryRead(failedNode: node)
        }
        self.server = nil
        self.routeEnded()
        self.tracker.reset()
        self.fatal(
            ErrorFields(
                severity: "FATAL", sqlState: "08006",
                message: "server closed the connection unexpectedly",
                hint: "The server may have been restarted or the connection terminated; reconnect."))
    }

    // MARK: Getting a server connection

    private func acquireServer() {
        guard !self.checkoutInProgress, self.server == nil, self.waitTimer == nil, !self.waitingForCatalog else { return }
        var chosenRoute: Choice?
        if case .ready = self.phase, self.shard.routes {
            guard let frame = self.pending.first else { return }
            if let profile = self.profile(of: frame), self.needsCatalog(profile) {
                // The first read calling functions in this database: wait the few milliseconds the
                // catalog takes rather than send a read to the primary (and count it as a write).
                self.waitingForCatalog = true
                self.shard.waitForCatalog(self.database, session: self)
                return
            }
            switch self.chooseRoute(for: frame) {
            case .wait(let why):
                return self.waitForTopology(why)
            case .node(let chosen):
                chosenRoute = chosen
                self.pool = self.shard.pool(for: PoolKey(database: self.database, user: self.userName, node: chosen.node))
            }
        }
        guard let pool = self.pool else { return }
        let choice = chosenRoute
        if let server = self.takeServerImmediately(pool) {
            self.attach(server, route: choice)
            self.drainPending()
            return
        }
        self.checkoutInProgress = true
        pool.checkout().flatMap { server in
            self.prepare(server, pool: pool)
        }.whenComplete { result in
            self.checkoutInProgress = false
            switch result {
            case .success(let server):
                switch self.phase {
                case .closing, .startup, .authenticating, .admin:
                    pool.release(server)
                case .loggingIn:
                    self.startupTimer?.cancel()
                    self.phase = .ready
                    pool.rememberLoginParameters(server.parameters.values, for: self.settings.statements)
                    if self.shard.routes {
                        // The login only needed the server's parameters: the first statement is routed.
                        self.sendLoginCompletion(parameters: server.parameters.values)
                        pool.release(server)
                    } else {
                        self.attach(server, route: nil)
                        self.sendLoginCompletion(parameters: server.parameters.values)
                    }
                    self.drainPending()
                case .ready:
                    self.attach(server, route: choice)
                    self.drainPending()
                }
            case .failure(let error):
                if case .ready = self.phase, let choice, Self.isConnectionFailure(error) {
                    self.shard.markSuspect(choice.node)
                    if choice.readOnly && self.config.routing.retryReads {
                        // A read costs the client latency, not an error: try the next node.
                        self.excludedNodes.insert(choice.node)
                        self.runtime.metrics.readRetries.increment()
                        self.acquireServer()
                    } else {
                        self.waitForTopology("the primary \(choice.node) is unreachable (\(error))")
                    }
                    return
                }
                let fields = (error as? TidegateError)?.clientFields
                    ?? ErrorFields(severity: "FATAL", sqlState: "08006", message: "server connection failed: \(error)")
                self.fatal(fields)
            }
        }
    }

    /// A failure to reach a node (as opposed to the node refusing the client's login or settings).
    static func isConnectionFailure(_ error: any Error) -> Bool {
        switch error as? TidegateError {
        case .serverRefused(let fields):
            // The server is starting up, shutting down or in recovery.
            return fields.sqlState?.hasPrefix("57P") == true
        case .poolTimeout:
            return false
        case .serverUnavailable, nil:
            return true
        }
    }

    /// An idle server connection with this client's settings, without waiting, or nil.
    private func takeServerImmediately(_ pool: ServerPool) -> ServerConnection? {
        guard case .ready = self.phase, let server = pool.checkoutImmediately() else { return nil }
        if server.appliedSettings == self.settings.statements { return server }
        pool.release(server)
        return nil
    }

    // MARK: Routing

    /// Where the next transaction goes, as decided for its first message.
    struct Choice {
        var node: String
        var reason: String
        var readOnly: Bool
        var onReplica: Bool
        var readOnlyTransaction: Bool
    }

    enum RouteChoice {
        case node(Choice)
        /// No node can take it now (no primary during a failover, or a split-brain): why.
        case wait(String)
    }

    /// The node a login uses: the primary when one is known, else any node that is up.
    private var loginNode: String {
        let config = self.config
        guard config.routes else { return config.nodes[0].name }
        let topology = self.shard.topology
        if let primary = topology.primary { return primary }
        return topology.nodes.first(where: { $0.state == .up })?.name ?? config.nodes[0].name
    }

    /// The routing profile of the statement a message carries; nil for messages that carry none.
    private func profile(of frame: PostgresFrame) -> RouteProfile? {
        switch frame.frontendID {
        case .query:
            var body = frame.body
            guard let query = body.readNullTerminatedBytes() else { return .primaryOnly }
            return self.shard.routeProfile(query)
        case .parse:
            guard let parse = try? FrontendMessage.parse(frame) else { return .primaryOnly }
            return self.shard.routeProfile(parse.queryBytes)
        case .bind:
            guard let bind = try? FrontendMessage.bind(frame) else { return .primaryOnly }
            guard let info = self.lookup(bind.statementName) else { return .primaryOnly }
            return self.shard.routeProfile(info.query)
        case .describe:
            guard let describe = try? FrontendMessage.describe(frame), describe.kind == UInt8(ascii: "S"),
                let info = self.lookup(describe.name)
            else { return nil }
            return self.shard.routeProfile(info.query)
        default:
            return nil
        }
    }

    private func isReadOnly(_ profile: RouteProfile) -> Bool {
        if profile.functions.isEmpty { return profile.readCandidate || profile.beginsReadOnlyTransaction }
        guard profile.readCandidate || profile.beginsReadOnlyTransaction else { return false }
        let state = self.shard.functionCatalog(database: self.database, user: self.userName, primary: self.shard.topology.primary)
        guard case .loaded(let catalog) = state else { return false }
        return profile.isReadOnly(isSafeFunction: catalog.isSafe)
    }

    /// Whether routing this profile needs the database's function catalog, which is loading now.
    private func needsCatalog(_ profile: RouteProfile) -> Bool {
        guard !profile.functions.isEmpty, profile.readCandidate || profile.beginsReadOnlyTransaction else { return false }
        if case .loading = self.shard.functionCatalog(database: self.database, user: self.userName, primary: self.shard.topology.primary) {
            return true
        }
        return false
    }

    private var waitingForCatalog = false

    /// The function catalog this session waited for has loaded (or failed to): route now.
    func catalogReady() {
        guard self.waitingForCatalog, case .ready = self.phase else { return }
        self.waitingForCatalog = false
        self.acquireServer()
    }

    /// The position a replica must have replayed for this session's reads (read-your-writes); the maximum
    /// LSN while the session's last write is not yet covered by a primary probe.
    private func minimumLSN() -> LSN? {
        let since: NIODeadline
        switch self.config.routing.readYourWrites {
        case .none:
            return nil
        case .session:
            if let lsn = self.writeLSN { return lsn }
            guard let lastWriteAt = self.lastWriteAt else { return nil }
            since = lastWriteAt
        case .global:
            let nanos = self.runtime.lastWriteNanos.load(ordering: .relaxed)
            guard nanos > 0 else { return nil }
            since = NIODeadline.uptimeNanoseconds(UInt64(nanos))
        }
        let topology = self.shard.topology
        guard let probe = topology.primaryProbe, probe.sentAt > since else {
            if topology.primary == nil {
                // No primary (failover): the write cannot be placed any more; the most advanced replica
                // is the best that can be done, rather than failing every read.
                return topology.nodes.filter { $0.role == .replica && $0.state != .down }.compactMap(\.lsn).max()
                    ?? LSN(UInt64.max)
            }
            return LSN(UInt64.max)
        }
        if self.config.routing.readYourWrites == .session { self.writeLSN = probe.lsn }
        return probe.lsn
    }

    private func chooseRoute(for frame: PostgresFrame) -> RouteChoice {
        let config = self.config
        let profile = self.profile(of: frame) ?? .primaryOnly
        // A batch that turned out to write, moved off a replica: the primary, as a write.
        let forced = self.forcePrimary
        self.forcePrimary = false
        let readOnly = !forced && self.isReadOnly(profile)
        var hint: RoutingRequest.Hint = .none
        switch profile.hint?.route ?? self.routePreference {
        case .primary: hint = .primary
        case .replica: hint = .replica
        case nil: break
        }
        let minimumLSN = readOnly ? self.minimumLSN() : nil
        var request = RoutingRequest(
            readOnly: readOnly, region: self.region, minimumLSN: minimumLSN,
            maxLagSeconds: profile.hint?.maxLagSeconds ?? Double(config.routing.maxLagMs) / 1000, hint: hint,
            hintRegion: profile.hint?.region)
        request.maxLagBytes = config.routing.maxLagBytes > 0 ? UInt64(config.routing.maxLagBytes) : nil
        request.excluded = self.excludedNodes
        let decision = Router.decide(request, nodes: self.shard.routingNodes, fallbackRegions: config.fallbackRegions(of: self.region))
        guard let node = decision.node else {
            let topology = self.shard.topology
            if decision.reason == .splitBrain {
                return .wait("split-brain: \(topology.primaries.joined(separator: " and ")) both claim to be the primary, so writes are refused")
            }
            if !readOnly || topology.nodes.allSatisfy({ $0.state == .down || self.excludedNodes.contains($0.name) }) {
                let known = topology.nodes.map { "\($0.name) \($0.state.rawValue)" }.joined(separator: ", ")
                return .wait("no primary is available (\(known.isEmpty ? "no node has answered a health probe yet" : known))")
            }
            return .wait("no node can serve this read")
        }
        let reason: String
        switch decision.reason {
        case .write: reason = "write"
        case .hintPrimary: reason = "hint"
        case .regionalReplica: reason = "regional_replica"
        case .fallbackReplica: reason = "fallback_replica"
        case .noReplicaPrimary: reason = minimumLSN == LSN(UInt64.max) ? "read_your_writes" : "no_replica"
        case .splitBrain: reason = "split_brain"
        case .noPrimary: reason = "no_primary"
        }
        let onReplica = decision.reason == .regionalReplica || decision.reason == .fallbackReplica
        return .node(
            Choice(
                node: node, reason: reason, readOnly: readOnly, onReplica: onReplica,
                readOnlyTransaction: onReplica && profile.beginsReadOnlyTransaction))
    }

    /// Whether a message must wait for the attached replica to be released and be routed anew: a
    /// statement that is not read-only, pipelined after an autocommit read that went to a replica.
    private func mustReroute(_ frame: PostgresFrame) -> Bool {
        guard self.mode == .transaction, let route = self.route, route.onReplica, !route.readOnlyTransaction,
            self.pinReason == nil, let profile = self.profile(of: frame)
        else { return false }
        if profile.beginsReadOnlyTransaction {
            self.route?.readOnlyTransaction = true
            return false
        }
        return !self.isReadOnly(profile)
    }

    /// A statement that may not run on the attached replica: true when it was taken care of, false to
    /// send it on. At a Sync (or simple Query) boundary it waits until the replica is released and is
    /// routed on its own. Inside an extended-protocol batch not yet ended by Sync it belongs to the same
    /// implicit transaction as what went before: while nothing has reached the client, the whole batch
    /// moves to the primary; after that it goes to the replica, which refuses it as any standby would.
    private func rerouteIfNeeded(_ frame: PostgresFrame, queued: Bool) -> Bool {
        guard self.mustReroute(frame) else { return false }
        if self.atSyncBoundary {
            self.holdForReroute = true
            if !queued { self.enqueue(frame) }
            self.releaseServerIfDone()
            return true
        }
        guard self.retry != nil else { return false }
        if !queued { self.enqueue(frame) }
        self.forcePrimary = true
        self.retryRead(failedNode: nil)
        return true
    }

    /// Notes a statement sent on the attached route: one that is not read-only makes the transaction a write.
    private func noteStatement(_ frame: PostgresFrame, id: FrontendMessageID) {
        guard let route = self.route, !route.wrote, !route.onReplica else { return }
        switch id {
        case .query, .parse, .bind, .functionCall:
            if id == .functionCall {
                self.route?.wrote = true
            } else if let profile = self.profile(of: frame), !profile.transactionControl, !self.isReadOnly(profile) {
                self.route?.wrote = true
            }
        default:
            break
        }
    }

    /// The attached server connection was let go: in-flight count and read-your-writes bookkeeping.
    private func routeEnded() {
        guard let route = self.route else { return }
        self.route = nil
        self.excludedNodes.removeAll()
        self.waitDeadline = nil
        self.shard.adjustInFlight(route.node, by: -1)
        if route.wrote && self.config.routing.readYourWrites != .none {
            let now = NIODeadline.now()
            self.lastWriteAt = now
            self.writeLSN = nil
            if self.config.routing.readYourWrites == .global { self.runtime.noteWrite(at: now) }
        }
    }

    /// No node can take the next request now: wait for the health checker to find one (a promoted
    /// primary) up to routing.failover_wait_ms, then fail the request with 57P03.
    private func waitForTopology(_ why: String) {
        let now = NIODeadline.now()
        self.waitReason = why
        if self.waitDeadline == nil {
            self.waitDeadline = now + .milliseconds(Int64(self.config.routing.failoverWaitMs))
            self.runtime.metrics.failoverWaits.increment()
            self.logger.info("waiting for a node", metadata: ["reason": "\(why)"])
        }
        guard let deadline = self.waitDeadline, deadline > now, let loop = self.context?.eventLoop else {
            return self.failWaitingRequest()
        }
        self.shard.topologyWaiters[self.id] = self
        self.waitTimer = loop.scheduleTask(deadline: deadline) { [weak self] in
            guard let self else { return }
            self.waitTimer = nil
            self.shard.topologyWaiters.removeValue(forKey: self.id)
            self.failWaitingRequest()
        }
    }

    /// The health checker published a new view: try again.
    func topologyChanged() {
        guard let timer = self.waitTimer else { return }
        timer.cancel()
        self.waitTimer = nil
        self.shard.topologyWaiters.removeValue(forKey: self.id)
        self.acquireServer()
    }

    /// Answers the first queued request with ERROR 57P03 (the session stays usable) and goes on with the
    /// rest.
    private func failWaitingRequest() {
        guard let context = self.context else { return }
        let waited = self.config.routing.failoverWaitMs
        self.waitDeadline = nil
        self.excludedNodes.removeAll()
        self.runtime.metrics.failoverTimeouts.increment()
        self.runtime.metrics.error(sqlState: "57P03")
        self.logger.warning("request failed: no node could take it", metadata: ["reason": "\(self.waitReason)"])
        var buffer = context.channel.allocator.buffer(capacity: 256)
        BackendEncoder.errorResponse(
            &buffer,
            ErrorFields(
                severity: "ERROR", sqlState: "57P03", message: "cannot run the statement now: \(self.waitReason)",
                detail: "Tidegate waited \(waited) ms (routing.failover_wait_ms) for a node to take it.",
                hint: "Retry once a primary has been promoted; SHOW NODES in the admin console shows what Tidegate sees."))
        var answered = false
        while let frame = self.pending.popFirst() {
            self.pendingBytes -= frame.raw.readableBytes
            if frame.id == FrontendMessageID.query.rawValue || frame.id == FrontendMessageID.sync.rawValue {
                answered = true
                break
            }
        }
        if self.pending.isEmpty { self.pendingBytes = 0 }
        if answered {
            BackendEncoder.readyForQuery(&buffer, status: self.transactionStatus)
        } else {
            // The client has not sent its Sync yet: what it sends up to it is discarded, then answered.
            self.discardUntilSync = true
        }
        context.writeAndFlush(NIOAny(buffer), promise: nil)
        if self.readingPaused && self.pendingBytes <= self.shard.config.limits.clientBufferBytes / 2 {
            self.readingPaused = false
            _ = context.channel.setOption(ChannelOptions.autoRead, value: true)
        }
        if !self.pending.isEmpty { self.acquireServer() }
    }

    // MARK: Read retries

    private func isRetryable(_ fields: ErrorFields) -> Bool {
        if fields.severity == "FATAL" || fields.severity == "PANIC" { return true }
        // Canceled by a conflict with recovery on a replica, or the server going down.
        return (self.route?.onReplica == true && fields.sqlState == "40001") || fields.sqlState?.hasPrefix("57P") == true
    }

    /// Nothing of the read reached the client: release what is held, the read can no longer be retried.
    private func closeRetryWindow() {
        self.retry = nil
        self.retryAnswered = false
        self.heldBytes = 0
        guard let context = self.context else {
            self.held.removeAll()
            return
        }
        let held = self.held
        self.held.removeAll()
        for buffer in held {
            if self.ackHold != nil { self.ackHold!.append(buffer) } else { context.write(NIOAny(buffer), promise: nil) }
        }
    }

    /// The read's node failed before anything reached the client: drop that server connection, put the
    /// session back as it was before the read was sent, and send the read again elsewhere.
    private func retryRead(failedNode: String?) {
        guard let window = self.retry else { return }
        self.retry = nil
        self.cacheFill?.capture.reset()
        self.held.removeAll()
        self.heldBytes = 0
        self.retryAnswered = false
        self.run = nil
        if let server = self.server {
            self.server = nil
            server.mustClose = true
            self.pool?.discard(server)
        }
        let excluded = self.excludedNodes
        self.routeEnded()
        self.excludedNodes = excluded
        self.statements = window.statements
        self.unnamed = window.unnamed
        self.portals = window.portals
        self.requestStarts = window.requestStarts
        self.currentClass = window.currentClass
        self.discardUntilSync = window.discardUntilSync
        self.tracker.reset()
        self.events.removeAll(keepingCapacity: true)
        if let failedNode {
            self.excludedNodes.insert(failedNode)
            self.runtime.metrics.readRetries.increment()
        }
        for frame in window.frames.reversed() {
            self.pending.prepend(frame)
            self.pendingBytes += frame.raw.readableBytes
        }
        self.acquireServer()
    }

    /// Brings a server connection to this client's settings: RESET ALL, then the client's SETs.
    private func prepare(_ server: ServerConnection, pool: ServerPool) -> EventLoopFuture<ServerConnection> {
        pool.prepare(server, settings: self.settings.statements)
    }

    private func attach(_ server: ServerConnection, route choice: Choice?) {
        server.attach(self)
        server.ownerDescription = "\(self.processID)"
        self.server = server
        if let choice {
            self.route = AttachedRoute(
                node: choice.node, readOnly: choice.readOnly, onReplica: choice.onReplica,
                readOnlyTransaction: choice.readOnlyTransaction)
            self.shard.adjustInFlight(choice.node, by: 1)
            self.routedFramePending = true
            self.atSyncBoundary = true
            self.shard.countRouted(node: choice.node, reason: choice.reason)
            if choice.readOnly && self.config.routing.retryReads && self.transactionStatus == .idle && self.mode == .transaction
                && self.pinReason == nil
            {
                self.retry = RetryWindow(
                    statements: self.statements, unnamed: self.unnamed, portals: self.portals, requestStarts: self.requestStarts,
                    currentClass: self.currentClass, discardUntilSync: self.discardUntilSync)
            }
        }
        if let context = self.context {
            server.setAutoRead(context.channel.isWritable)
            // Parameters that differ on this server connection (a setting this client did not make).
            if case .ready = self.phase, !self.reportedParameters.isEmpty,
                server.parameters.fingerprint != self.reportedParameters.fingerprint
            {
                for (name, value) in server.parameters.values
                where self.reportedParameters[name] != value && !(name == "in_hot_standby" && self.shard.routes) {
                    var buffer = context.channel.allocator.buffer(capacity: 32)
                    BackendEncoder.parameterStatus(&buffer, name: name, value: value)
                    self.reportedParameters[name] = value
                    context.write(NIOAny(buffer), promise: nil)
                }
            }
        }
    }

    private func drainPending() {
        while self.server != nil, case .ready = self.phase, let frame = self.pending.first {
            // The message the route was chosen for needs no second look.
            let routed = self.routedFramePending
            self.routedFramePending = false
            if !routed && self.rerouteIfNeeded(frame, queued: true) { break }
            self.pending.removeFirst()
            self.pendingBytes -= frame.raw.readableBytes
            self.process(frame)
        }
        if self.pending.isEmpty { self.pendingBytes = 0 }
        self.server?.flush()
        self.context?.flush()
        if self.readingPaused && self.pendingBytes <= self.shard.config.limits.clientBufferBytes / 2 {
            self.readingPaused = false
            _ = self.context?.channel.setOption(ChannelOptions.autoRead, value: true)
        }
        // A request that ended while the queue drained (e.g. a synthesized answer) may free the server.
        if !self.pending.isEmpty && self.server == nil { self.acquireServer() }
        self.releaseServerIfDone()
    }

    // MARK: Cache

    /// Whether a new request may be answered from the cache: nothing is owed, no transaction is open, and
    /// the session has not made state a key cannot describe (a temporary table, LISTEN…).
    private var cacheIdle: Bool {
        self.pending.isEmpty && self.tracker.isIdle && self.transactionStatus == .idle && !self.checkoutInProgress
            && self.waitTimer == nil && self.retry == nil && !self.copyIn && self.cacheFill == nil && !self.cacheTainted
            && self.pinReason == nil && !self.holdForReroute && !self.discardUntilSync && !self.restoreStartupAtReady
    }

    /// Frames held for the cache: a simple Query or an extended-protocol request up to its Sync is looked up
    /// before it goes anywhere. Returns true when the frame was taken.
    private func interceptForCache(_ frame: PostgresFrame) -> Bool {
        if self.cacheLookupActive {
            self.cacheQueue.append(frame)
            self.cacheQueueBytes += frame.raw.readableBytes
            if self.cacheQueueBytes > self.config.limits.clientBufferBytes && !self.readingPaused {
                self.readingPaused = true
                _ = self.context?.channel.setOption(ChannelOptions.autoRead, value: false)
            }
            return true
        }
        guard let id = frame.frontendID else { return false }
        if !self.cacheCandidate.isEmpty {
            switch id {
            case .parse, .bind, .describe, .execute:
                self.cacheCandidate.append(frame)
                if self.cacheCandidate.count > 4 { self.releaseCacheCandidate() }
                return true
            case .sync:
                self.cacheCandidate.append(frame)
                let frames = self.cacheCandidate
                self.cacheCandidate = []
                if let (plan, prelude) = self.extendedCachePlan(frames) {
                    self.startCacheLookup(plan, frames: frames, prelude: prelude)
                } else {
                    for frame in frames { self.handleReadyFrame(frame) }
                }
                return true
            default:
                self.releaseCacheCandidate()
                return false
            }
        }
        guard self.cacheIdle else { return false }
        switch id {
        case .query:
            var body = frame.body
            guard let query = body.readNullTerminatedBytes(), body.readableBytes == 0,
                let plan = self.cachePlan(query: query, parameters: [], shape: [UInt8(ascii: "Q")], extra: [])
            else { return false }
            self.startCacheLookup(plan, frames: [frame], prelude: nil)
            return true
        case .parse, .bind:
            guard self.renames else { return false }
            self.cacheCandidate = [frame]
            return true
        default:
            return false
        }
    }

    /// The held extended-protocol messages go their normal way.
    private func releaseCacheCandidate() {
        let frames = self.cacheCandidate
        self.cacheCandidate = []
        for frame in frames { self.handleReadyFrame(frame) }
    }

    /// What a replayed extended-protocol hit must do to the session first: register the statement of its
    /// Parse, as processing the Parse would have.
    struct CachePrelude {
        var parse: FrontendMessage.Parse
        var info: StatementInfo
    }

    /// `[Parse] Bind [Describe portal] Execute(all rows) Sync` of one cacheable statement, on the unnamed
    /// portal or one named portal: its plan.
    /// One `[Parse] Bind [Describe portal] Execute Sync` request on one statement, as the cache and the
    /// batcher take it.
    struct ExtendedRequest {
        var prelude: CachePrelude?
        var info: StatementInfo
        var bind: FrontendMessage.Bind
        var bindFrame: PostgresFrame
        var values: FrontendMessage.BindValues
        var describes: Bool
        var execute: FrontendMessage.Execute
    }

    private func extendedRequest(_ frames: [PostgresFrame]) throws -> ExtendedRequest? {
        var index = 0
        var prelude: CachePrelude?
        var statementInfo: StatementInfo?
        if frames[index].id == FrontendMessageID.parse.rawValue {
            let parse = try FrontendMessage.parse(frames[index])
            guard parse.statementName.isEmpty ? self.config.pool.prepareUnnamed : self.statements[parse.statementName] == nil
            else { return nil }
            let info = self.shard.statementInfo(
                query: parse.queryBytes, parameterTypes: parse.parameterTypes, searchPath: self.settingsFingerprint,
                database: self.database, user: self.userName)
            prelude = CachePrelude(parse: parse, info: info)
            statementInfo = info
            index += 1
        }
        guard index < frames.count, frames[index].id == FrontendMessageID.bind.rawValue else { return nil }
        let bind = try FrontendMessage.bind(frames[index])
        if let prelude {
            guard bind.statementName == prelude.parse.statementName else { return nil }
        } else {
            statementInfo = self.lookup(bind.statementName)
        }
        guard let info = statementInfo else { return nil }
        let bindFrame = frames[index]
        let values = try FrontendMessage.bindValues(bindFrame, bind)
        index += 1
        var describes = false
        if index < frames.count, frames[index].id == FrontendMessageID.describe.rawValue {
            let describe = try FrontendMessage.describe(frames[index])
            guard describe.kind == UInt8(ascii: "P"), describe.name == bind.portalName else { return nil }
            describes = true
            index += 1
        }
        guard index + 2 == frames.count, frames[index].id == FrontendMessageID.execute.rawValue,
            frames[index + 1].id == FrontendMessageID.sync.rawValue
        else { return nil }
        let execute = try FrontendMessage.execute(frames[index])
        guard execute.portalName == bind.portalName else { return nil }
        return ExtendedRequest(
            prelude: prelude, info: info, bind: bind, bindFrame: bindFrame, values: values, describes: describes, execute: execute)
    }

    private func extendedCachePlan(_ frames: [PostgresFrame]) -> (CachePlan, CachePrelude?)? {
        do {
            guard let request = try self.extendedRequest(frames), request.execute.maxRows == 0 else { return nil }
            let info = request.info
            let values = request.values
            let prelude = request.prelude
            let describes = request.describes
            var parameters: [BoundParameter] = []
            parameters.reserveCapacity(values.parameters.count)
            for (position, value) in values.parameters.enumerated() {
                let type = position < info.parameterTypes.count ? info.parameterTypes[position] : 0
                parameters.append(BoundParameter(value: value, binary: values.isBinary(position), typeOID: type))
            }
            var extra: [[UInt8]] = [info.parameterTypes.flatMap { oid in (0..<4).map { UInt8(truncatingIfNeeded: oid >> (24 - 8 * $0)) } }]
            extra.append(values.parameterFormats.flatMap { [UInt8(truncatingIfNeeded: $0 >> 8), UInt8(truncatingIfNeeded: $0)] })
            for value in values.parameters {
                extra.append(value.map { [1] + Array($0.readableBytesView) } ?? [0])
            }
            extra.append(values.resultFormats.flatMap { [UInt8(truncatingIfNeeded: $0 >> 8), UInt8(truncatingIfNeeded: $0)] })
            let shape: [UInt8] = [UInt8(ascii: "E"), prelude == nil ? 0 : 1, describes ? 1 : 0]
            guard let plan = self.cachePlan(query: info.clientQuery, parameters: parameters, shape: shape, extra: extra) else {
                return nil
            }
            return (plan, prelude)
        } catch {
            return nil
        }
    }

    /// TimeZone names that are UTC: literals without a zone are then exact instants.
    static let utcZones: Set<String> = [
        "UTC", "Etc/UTC", "GMT", "Etc/GMT", "UCT", "Etc/UCT", "Zulu", "Etc/Zulu", "Universal", "Etc/Universal", "GMT0", "Etc/GMT0",
    ]
    /// Reported settings that change the bytes of a result (with every SET the session made).
    static let keyedParameters = [
        "TimeZone", "DateStyle", "IntervalStyle", "client_encoding", "standard_conforming_strings", "is_superuser",
        "session_authorization", "integer_datetimes",
    ]

    /// The settings part of a cache key: every setting the session made (but application_name, which
    /// changes no result) and the reported parameters that change text output.
    private var cacheSettingsKey: [UInt8] {
        if let cached = self.cachedSettingsKey, cached.parameters == self.reportedParameters.fingerprint,
            cached.settings == self.settingsFingerprint
        {
            return cached.key
        }
        var key: [UInt8] = []
        for entry in self.settings.entries where entry.name != "application_name" {
            key.append(contentsOf: entry.statement.utf8)
            key.append(0)
        }
        key.append(1)
        for name in Self.keyedParameters {
            key.append(contentsOf: name.utf8)
            key.append(61)
            key.append(contentsOf: (self.reportedParameters[name] ?? "").utf8)
            key.append(0)
        }
        self.cachedSettingsKey = (self.settingsFingerprint, self.reportedParameters.fingerprint, key)
        return key
    }

    /// The plan of one execution of `query`, or nil when it is not answered from the cache.
    private func cachePlan(query: ByteBuffer, parameters: [BoundParameter], shape: [UInt8], extra: [[UInt8]]) -> CachePlan? {
        guard let tier = self.shard.cacheTier else { return nil }
        let profile = self.shard.cacheProfile(query)
        guard profile.isCacheable, !profile.hintOff, parameters.count >= profile.parameterCount else { return nil }
        let settings = tier.settings
        let querySetting = settings.queries[profile.fingerprint]
        if querySetting?.enabled == false { return nil }
        if !profile.functions.isEmpty {
            let primary = self.shard.topology.primary ?? (self.shard.routes ? nil : self.config.nodes.first?.name)
            guard case .loaded(let catalog) = self.shard.functionCatalog(database: self.database, user: self.userName, primary: primary)
            else {
                tier.countBypass("function catalog not loaded", fingerprint: profile.fingerprint)
                return nil
            }
            let allowed = self.shard.cacheSafeFunctions
            guard profile.functions.allSatisfy({ catalog.isCacheSafe($0, allowed: allowed) }) else { return nil }
        }
        let utc = Self.utcZones.contains(self.reportedParameters["TimeZone"] ?? "")
        let dependencies = DependencyResolver.resolve(profile.dependencies, parameters: parameters, utcSession: utc)
        let tags = tier.tags.readTags(database: self.database, dependencies: dependencies)
        let now = CacheTier.nowMillis()
        let ttl: Int
        if let fixed = querySetting?.ttlMs {
            ttl = fixed
        } else if tier.tags.isSealed(dependencies, nowMicros: now * 1_000) {
            ttl = dependencies.map { self.config.relations[$0.relation]?.cacheTTLMs ?? settings.sealedTTLMs }.min() ?? settings.sealedTTLMs
        } else {
            ttl = settings.liveTTLMs
        }
        let staleness = profile.maxStalenessSeconds.map { Int($0 * 1_000) } ?? settings.roleMaxStalenessMs[self.userName]
        var parts: [[UInt8]] = [Array("tidegate-cache-1".utf8), shape, Array(self.database.utf8), Array(self.userName.utf8)]
        parts.append(self.cacheSettingsKey)
        parts.append(Array(query.readableBytesView))
        parts.append(contentsOf: extra)
        let key = CacheKey(parts: parts)
        // The entry holds the key material too: a text and parameters past the entry limit are not cached.
        guard key.material.count < settings.maxEntryBytes else { return nil }
        return CachePlan(
            key: key, database: self.database, fingerprint: profile.fingerprint, tags: tags, ttlMs: ttl,
            maxStalenessMs: staleness)
    }

    private func startCacheLookup(_ plan: CachePlan, frames: [PostgresFrame], prelude: CachePrelude?) {
        guard let tier = self.shard.cacheTier, let loop = self.context?.eventLoop else {
            for frame in frames { self.handleReadyFrame(frame) }
            return
        }
        self.cacheLookupActive = true
        let topology = self.shard.topology
        let started = NIODeadline.now()
        tier.lookup(plan, on: loop).whenComplete { result in
            self.cacheLookupActive = false
            guard case .ready = self.phase, self.context != nil else {
                if case .success(.miss(let ticket?)) = result { tier.complete(ticket, reply: nil, refusal: "client went away", on: loop) }
                return
            }
            switch result {
            case .success(.hit(let reply)):
                self.serveCacheHit(reply, prelude: prelude, started: started)
            case .success(.miss(let ticket)):
                if let ticket {
                    // Key material and reply together stay within cache.max_entry_bytes.
                    let limit = tier.settings.maxEntryBytes - ticket.plan.key.material.count
                    self.cacheFill = (ticket, ReplyCapture(limit: limit), topology)
                }
                for frame in frames { self.handleReadyFrame(frame) }
            case .success(.bypass), .failure:
                for frame in frames { self.handleReadyFrame(frame) }
            }
            self.drainCacheQueue()
            // Outside channelRead nothing else flushes what was just written.
            self.server?.flush()
            self.context?.flush()
        }
    }

    /// Frames that arrived during a lookup, in order (one of them may start another lookup).
    private func drainCacheQueue() {
        while !self.cacheLookupActive, let frame = self.cacheQueue.popFirst() {
            self.cacheQueueBytes -= frame.raw.readableBytes
            self.handleFrame(frame)
        }
        if self.cacheQueue.isEmpty && self.readingPaused && self.pendingBytes <= self.config.limits.clientBufferBytes {
            self.readingPaused = false
            _ = self.context?.channel.setOption(ChannelOptions.autoRead, value: true)
        }
        self.context?.channel.read()
    }

    private func serveCacheHit(_ reply: ByteBuffer, prelude: CachePrelude?, started: NIODeadline) {
        if let prelude {
            if prelude.parse.statementName.isEmpty {
                self.unnamed = prelude.info
            } else {
                self.statements[prelude.parse.statementName] = Statement(info: prelude.info)
            }
        }
        var out = reply
        BackendEncoder.readyForQuery(&out, status: .idle)
        self.flushRun()
        self.writeClient(out)
        self.context?.flush()
        self.queries += 1
        self.shard.queries += 1
        self.shard.cacheHits += 1
        self.shard.bytesOut += out.readableBytes
        let nanos = (NIODeadline.now() - started).nanoseconds
        self.shard.queryNanos += nanos
        self.runtime.metrics.query(.read, nanoseconds: nanos)
        self.runtime.metrics.cacheHit(nanoseconds: nanos)
    }

    /// The miss's reply is complete: store it if it may be (a replica's only when it had replayed past every
    /// version read before the query was sent).
    private func finishCacheFill(_ status: TransactionStatus) {
        guard let (ticket, capture, topology) = self.cacheFill, let tier = self.shard.cacheTier, let loop = self.context?.eventLoop
        else { return }
        self.cacheFill = nil
        var refusal = capture.refusal
        if refusal == nil && status != .idle { refusal = "left a transaction open" }
        if refusal == nil, let route = self.route, route.onReplica {
            let replayed = topology.nodes.first(where: { $0.name == route.node })?.lsn
            if replayed == nil || replayed!.value < ticket.maxVersion { refusal = "replica had not replayed the versions read" }
        }
        tier.complete(ticket, reply: refusal == nil ? capture.bytes : nil, refusal: refusal, on: loop)
    }

    /// A statement that may write a cached relation: which relations to invalidate once its transaction is
    /// over.
    private func noteCacheWrites(_ query: ByteBuffer) {
        guard self.shard.cacheTier != nil else { return }
        switch self.shard.cacheWriteEffect(query, database: self.database, user: self.userName) {
        case .none: break
        case .relations(let names): self.cacheWrites.formUnion(names)
        case .all: self.cacheWrites.formUnion(self.shard.config.cachedRelations.keys)
        }
    }

    /// A transaction that wrote cached relations ended: hold the client's output (its acknowledgement among
    /// it) until the relations' versions have moved past the commit, so no read that begins after the
    /// acknowledgement can be served the old result.
    private func invalidateCacheWrites() {
        guard !self.cacheWrites.isEmpty, let tier = self.shard.cacheTier, let loop = self.context?.eventLoop else { return }
        let relations = self.cacheWrites
        self.cacheWrites = []
        if self.ackHold == nil { self.ackHold = [] }
        self.ackHoldCount += 1
        let database = self.database
        let tags = Set(relations.map { tier.tags.epochKey(database: database, relation: $0) })
        let primary = self.shard.topology.primary
        self.shard.commitProbe.position(config: self.config, primary: primary).flatMap { lsn -> EventLoopFuture<Void> in
            if self.config.routing.readYourWrites == .session { self.writeLSN = max(self.writeLSN ?? lsn, lsn) }
            // The replication listener moves the exact tags of the rows written; only without it (or when it
            // is too slow) do the relations' epochs move, invalidating all their entries.
            return tier.waitForListener(database: database, lsn: lsn, on: loop).flatMap { seen in
                seen ? loop.makeSucceededVoidFuture() : tier.invalidate(tags, lsn: lsn, on: loop)
            }
        }.flatMapError { error -> EventLoopFuture<Void> in
            // Without the commit's position a replica's fill could not be checked against it: invalidate all.
            self.logger.warning("no WAL position after a write; replacing the cache generation", metadata: ["error": "\(error)"])
            return tier.replaceGeneration(on: loop).flatMapError { _ in loop.makeSucceededVoidFuture() }
        }.whenComplete { _ in
            self.ackHoldCount -= 1
            guard self.ackHoldCount == 0, let held = self.ackHold else { return }
            self.ackHold = nil
            for buffer in held { self.context?.write(NIOAny(buffer), promise: nil) }
            self.context?.flush()
        }
    }

    // MARK: Insert coalescing

    /// A statement with the batcher: what its reply starts with, and its outcome once known.
    struct BatchReply {
        var id: Int
        var simple: Bool
        var parse: Bool
        var describe: Bool
        var started: NIODeadline
        var outcome: BatchOutcome?
    }

    /// A frame that is not the cache's or the batcher's: the cache may answer it, else it goes its way.
    private func routeAfterBatch(_ frame: PostgresFrame) {
        if self.shard.cacheTier != nil && self.interceptForCache(frame) { return }
        self.handleReadyFrame(frame)
    }

    /// Whether a new request may go to the batcher: transaction pooling, nothing owed by a server, no
    /// transaction, no state a batch connection lacks (temporary tables, pinned sessions).
    private var batchIdle: Bool {
        // A server connection still attached after the login (or the last reply) is let go first.
        self.renames && self.pending.isEmpty && self.tracker.isIdle && self.transactionStatus == .idle
            && !self.checkoutInProgress && self.waitTimer == nil && self.retry == nil && !self.copyIn && self.cacheFill == nil
            && !self.cacheLookupActive && self.cacheCandidate.isEmpty && !self.cacheTainted && self.pinReason == nil
            && !self.holdForReroute && !self.discardUntilSync && !self.restoreStartupAtReady && self.batchReplies.count < 4_096
    }

    /// Takes a frame for the batcher (a batchable INSERT, or a message that must wait behind one). Returns
    /// true when the frame was taken.
    private func interceptForBatch(_ frame: PostgresFrame, fromQueue: Bool) -> Bool {
        self.batchIntercept(frame, fromQueue: fromQueue) != .passes
    }

    enum BatchIntercept {
        case taken
        /// Back at the head of the queue: it waits for the replies owed before it.
        case waits
        case passes
    }

    private func batchIntercept(_ frame: PostgresFrame, fromQueue: Bool) -> BatchIntercept {
        if !fromQueue && (!self.batchQueue.isEmpty || self.batchRoomWait != nil) {
            self.queueBehindBatches(frame)
            return .taken
        }
        guard let id = frame.frontendID else { return .passes }
        if !self.batchCandidate.isEmpty {
            switch id {
            case .bind, .describe, .execute:
                self.batchCandidate.append(frame)
                if self.batchCandidate.count > 4 { self.releaseBatchCandidate() }
                return .taken
            case .sync:
                self.batchCandidate.append(frame)
                let frames = self.batchCandidate
                self.batchCandidate = []
                if let insert = self.batchCandidateInsert, self.submitExtendedBatch(frames, insert: insert) {
                    self.batchCandidateInsert = nil
                } else {
                    self.batchCandidateInsert = nil
                    self.release(frames)
                }
                return .taken
            default:
                self.releaseBatchCandidate()
                if !self.batchQueue.isEmpty {
                    self.queueBehindBatches(frame)
                    return .taken
                }
                return self.batchIntercept(frame, fromQueue: true)
            }
        }
        if self.batchIdle {
            switch id {
            case .query:
                var body = frame.body
                if let query = body.readNullTerminatedBytes(), body.readableBytes == 0 {
                    if let insert = self.shard.batchableInsert(query) {
                        self.releaseServerIfDone()
                        if self.server == nil && self.submitSimpleBatch(frame, query: query, insert: insert) { return .taken }
                    } else {
                        self.shard.noteNotBatched(query, database: self.database)
                    }
                }
            case .parse:
                if let parse = try? FrontendMessage.parse(frame), let insert = self.shard.batchableInsert(parse.queryBytes),
                    parse.statementName.isEmpty ? self.config.pool.prepareUnnamed : self.statements[parse.statementName] == nil
                {
                    if self.startBatchCandidate(frame, insert) { return .taken }
                }
            case .bind:
                if let bind = try? FrontendMessage.bind(frame), let info = self.lookup(bind.statementName) {
                    if let insert = self.shard.batchableInsert(info.clientQuery) {
                        if self.startBatchCandidate(frame, insert) { return .taken }
                    } else {
                        self.shard.noteNotBatched(info.clientQuery, database: self.database)
                    }
                }
            default:
                break
            }
        }
        if !self.batchReplies.isEmpty {
            if fromQueue {
                self.batchQueue.prepend(frame)
                self.batchQueueBytes += frame.raw.readableBytes
                return .waits
            }
            self.queueBehindBatches(frame)
            return .taken
        }
        return .passes
    }

    /// Holds a Parse or Bind of a batchable INSERT until its Sync (a server connection still attached after
    /// the login or the last reply is let go first).
    private func startBatchCandidate(_ frame: PostgresFrame, _ insert: BatchableInsert) -> Bool {
        self.releaseServerIfDone()
        guard self.server == nil else { return false }
        self.batchCandidate = [frame]
        self.batchCandidateInsert = insert
        return true
    }

    private func queueBehindBatches(_ frame: PostgresFrame) {
        self.batchQueue.append(frame)
        self.batchQueueBytes += frame.raw.readableBytes
        if self.batchQueueBytes > self.config.limits.clientBufferBytes && !self.readingPaused {
            self.readingPaused = true
            _ = self.context?.channel.setOption(ChannelOptions.autoRead, value: false)
        }
    }

    private func releaseBatchCandidate() {
        let frames = self.batchCandidate
        self.batchCandidate = []
        self.batchCandidateInsert = nil
        self.release(frames)
    }

    /// Frames the batcher does not take go their normal way, after the replies owed before them.
    private func release(_ frames: [PostgresFrame]) {
        for frame in frames {
            if self.batchReplies.isEmpty && self.batchQueue.isEmpty {
                self.routeAfterBatch(frame)
            } else {
                self.queueBehindBatches(frame)
            }
        }
    }

    private func submitSimpleBatch(_ frame: PostgresFrame, query: ByteBuffer, insert: BatchableInsert) -> Bool {
        guard let (values, binary) = Self.rowValues(insert.shape, bound: nil), let declared = insert.shape.declaredOIDs(parameterTypes: [])
        else { return false }
        return self.submitBatch(
            insert, values: values, declared: declared, binary: binary, original: .simple(insert.ignoringConflicts ?? query),
            frames: [frame], reply: BatchReply(id: 0, simple: true, parse: false, describe: false, started: .now()), prelude: nil)
    }

    /// `[Parse] Bind [Describe portal] Execute(all rows) Sync` of one batchable INSERT.
    private func submitExtendedBatch(_ frames: [PostgresFrame], insert: BatchableInsert) -> Bool {
        guard let request = try? self.extendedRequest(frames) else { return false }
        let shape = insert.shape
        let info = request.info
        let bound = request.values
        // The statement's parameters as PostgreSQL counts them; any mismatch gets its error from PostgreSQL.
        let expected = max(shape.parameterCount, info.parameterTypes.count)
        guard bound.parameters.count == expected, bound.parameterFormats.count <= 1 || bound.parameterFormats.count == expected,
            bound.parameterFormats.allSatisfy({ $0 == 0 || $0 == 1 }),
            let declared = shape.declaredOIDs(parameterTypes: info.parameterTypes),
            let (values, binary) = Self.rowValues(shape, bound: bound)
        else { return false }
        let unnamedBind = FrontendMessage.rewriteBind(request.bindFrame, request.bind, statementName: "")
        let original = BatchOriginal.extended(
            query: insert.ignoringConflicts ?? info.clientQuery, parameterTypes: info.parameterTypes, bind: unnamedBind,
            portal: request.bind.portalName)
        return self.submitBatch(
            insert, values: values, declared: declared, binary: binary, original: original, frames: frames,
            reply: BatchReply(id: 0, simple: false, parse: request.prelude != nil, describe: request.describes, started: .now()),
            prelude: request.prelude)
    }

    /// Each row's values by slot (constants as their text, parameters as bound) and whether each slot is in
    /// binary; nil when a slot's values come in different formats, or a simple query names a parameter
    /// (PostgreSQL then reports it).
    static func rowValues(_ shape: InsertShape, bound: FrontendMessage.BindValues?) -> ([[ByteBuffer?]], [Bool])? {
        var binary: [Bool?] = Array(repeating: nil, count: shape.slotClasses.count)
        var values: [[ByteBuffer?]] = []
        values.reserveCapacity(shape.rows.count)
        for row in shape.rows {
            var out: [ByteBuffer?] = []
            out.reserveCapacity(row.count)
            for (slot, value) in row.enumerated() {
                let isBinary: Bool
                switch value {
                case .constant(let text):
                    out.append(text.map { ByteBuffer(string: $0) })
                    isBinary = false
                case .parameter(let number):
                    guard let bound else { return nil }
                    out.append(bound.parameters[number - 1])
                    isBinary = bound.isBinary(number - 1)
                }
                if let known = binary[slot], known != isBinary { return nil }
                binary[slot] = isBinary
            }
            values.append(out)
        }
        return (values, binary.map { $0 ?? false })
    }

    private func submitBatch(
        _ insert: BatchableInsert, values: [[ByteBuffer?]], declared: [UInt32], binary: [Bool], original: BatchOriginal,
        frames: [PostgresFrame], reply: BatchReply, prelude: CachePrelude?
    ) -> Bool {
        let shape = insert.shape
        guard let batcher = self.shard.batcher, let relation = self.config.relations[shape.relation], relation.batch.enabled else {
            return false
        }
        if !shape.functions.isEmpty {
            // Only functions whose result the values and the settings decide (not now(), not volatile ones):
            // a batch runs later, in another transaction.
            let primary = self.shard.topology.primary ?? (self.shard.routes ? nil : self.config.nodes.first?.name)
            guard case .loaded(let catalog) = self.shard.functionCatalog(database: self.database, user: self.userName, primary: primary)
            else {
                self.runtime.batchStats.unbatchable(database: self.database, relation: relation.name, reason: "function catalog not loaded yet")
                return false
            }
            guard shape.functions.allSatisfy({ catalog.isCacheSafe($0, allowed: []) }) else { return false }
        }
        self.batchSequence += 1
        let id = self.batchSequence
        var reply = reply
        reply.id = id
        let item = BatchItem(values: values, original: original, zone: self.sessionTimeZone) { [weak self] outcome in
            self?.batchFinished(id, outcome)
        }
        let key = BatchGroupKey(
            database: self.database, user: self.userName, settings: self.settings.statements, template: shape.template, binary: binary,
            declared: declared)
        switch batcher.submit(item, key: key, shape: shape, relation: relation) {
        case .refused:
            return false
        case .accepted:
            break
        case .full:
            self.batchRoomWait = (item, key, shape, frames)
            if !self.readingPaused {
                self.readingPaused = true
                _ = self.context?.channel.setOption(ChannelOptions.autoRead, value: false)
            }
            batcher.whenRoom { [weak self] in self?.retryBatchRoom() }
        }
        if let prelude {
            if prelude.parse.statementName.isEmpty {
                self.unnamed = prelude.info
            } else {
                self.statements[prelude.parse.statementName] = Statement(info: prelude.info)
            }
        }
        self.batchReplies.append(reply)
        return true
    }

    /// The session's TimeZone as this system knows it (nil: unknown, e.g. a POSIX rule string).
    private var sessionTimeZone: TimeZone? {
        let name = self.reportedParameters["TimeZone"] ?? "UTC"
        if let cached = self.cachedZone, cached.name == name { return cached.zone }
        let zone = Self.utcZones.contains(name) ? TimeZone(identifier: "UTC") : TimeZone(identifier: name)
        self.cachedZone = (name, zone)
        return zone
    }

    private var cachedZone: (name: String, zone: TimeZone?)?

    /// The relation's buffer had no room for the waiting statement: try again (stay paused while full).
    private func retryBatchRoom() {
        guard let (item, key, shape, frames) = self.batchRoomWait, let batcher = self.shard.batcher,
            let relation = self.config.relations[shape.relation]
        else { return }
        switch batcher.submit(item, key: key, shape: shape, relation: relation) {
        case .full:
            batcher.whenRoom { [weak self] in self?.retryBatchRoom() }
            return
        case .accepted:
            self.batchRoomWait = nil
        case .refused:
            // Run it the normal way, in its place.
            self.batchRoomWait = nil
            if let index = self.batchReplies.lastIndex(where: { $0.outcome == nil }) { self.batchReplies.remove(at: index) }
            for frame in frames.reversed() {
                self.batchQueue.prepend(frame)
                self.batchQueueBytes += frame.raw.readableBytes
            }
        }
        self.drainBatchQueue()
    }

    private func batchFinished(_ id: Int, _ outcome: BatchOutcome) {
        guard let index = self.batchReplies.firstIndex(where: { $0.id == id }) else { return }
        self.batchReplies[index].outcome = outcome
        guard let context = self.context else { return }
        var out = context.channel.allocator.buffer(capacity: 64)
        while let head = self.batchReplies.first, let outcome = head.outcome {
            self.batchReplies.removeFirst()
            self.writeBatchReply(head, outcome, into: &out)
        }
        guard out.readableBytes > 0 else { return }
        self.flushRun()
        self.writeClient(out)
        context.flush()
        self.drainBatchQueue()
    }

    private func writeBatchReply(_ reply: BatchReply, _ outcome: BatchOutcome, into out: inout ByteBuffer) {
        let nanos = (NIODeadline.now() - reply.started).nanoseconds
        self.queries += 1
        self.shard.queries += 1
        self.shard.queryNanos += nanos
        self.runtime.metrics.query(.write, nanoseconds: nanos)
        switch outcome {
        case .inserted(let rows, let lsn):
            if !reply.simple {
                if reply.parse { BackendEncoder.simple(&out, .parseComplete) }
                BackendEncoder.simple(&out, .bindComplete)
                if reply.describe { BackendEncoder.simple(&out, .noData) }
            }
            BackendEncoder.commandComplete(&out, tag: "INSERT 0 \(rows)")
            // Read-your-writes: the session's next reads wait for a replica past this commit.
            switch self.config.routing.readYourWrites {
            case .session:
                if let lsn { self.writeLSN = max(self.writeLSN ?? lsn, lsn) } else { self.lastWriteAt = .now() }
            case .global:
                self.runtime.noteWrite(at: .now())
            case .none:
                break
            }
        case .failed(let fields, let before):
            if !reply.simple {
                let parsed = before.isEmpty || before.contains(BackendMessageID.parseComplete.rawValue)
                let bound = before.isEmpty || before.contains(BackendMessageID.bindComplete.rawValue)
                if reply.parse && parsed { BackendEncoder.simple(&out, .parseComplete) }
                if bound { BackendEncoder.simple(&out, .bindComplete) }
                if bound && reply.describe { BackendEncoder.simple(&out, .noData) }
            }
            BackendEncoder.errorResponse(&out, fields)
            self.shard.errors += 1
            if let state = fields.sqlState { self.runtime.metrics.error(sqlState: state) }
        }
        BackendEncoder.readyForQuery(&out, status: .idle)
        self.shard.bytesOut += out.readableBytes
    }

    /// Messages that waited behind the batcher's replies, in order (more INSERTs among them go to the
    /// batcher at once).
    private func drainBatchQueue() {
        while self.batchRoomWait == nil, let frame = self.batchQueue.popFirst() {
            self.batchQueueBytes -= frame.raw.readableBytes
            switch self.batchIntercept(frame, fromQueue: true) {
            case .taken: continue
            case .waits: break
            case .passes: self.routeAfterBatch(frame); continue
            }
            break
        }
        if self.batchQueue.isEmpty && self.batchRoomWait == nil && self.readingPaused && self.pendingBytes <= self.config.limits.clientBufferBytes
            && self.cacheQueue.isEmpty
        {
            self.readingPaused = false
            _ = self.context?.channel.setOption(ChannelOptions.autoRead, value: true)
        }
        self.server?.flush()
        self.context?.flush()
        self.context?.channel.read()
    }

    // MARK: Errors

    private func protocolViolation(_ message: String) {
        self.runtime.metrics.protocolErrors.increment()
        self.fatal(ErrorFields(severity: "FATAL", sqlState: "08P01", message: message))
    }

    /// Sends a FATAL error, flushes it, then closes.
    func fatal(_ fields: ErrorFields) {
        guard let context = self.context else { return }
        if case .closing = self.phase { return }
        self.flushRun()
        self.phase = .closing
        if let sqlState = fields.sqlState { self.runtime.metrics.error(sqlState: sqlState) }
        var buffer = context.channel.allocator.buffer(capacity: 128)
        BackendEncoder.errorResponse(&buffer, fields)
        let channel = context.channel
        context.writeAndFlush(NIOAny(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }

    // MARK: Admin view

    var stateName: String {
        switch self.phase {
        case .startup, .authenticating, .loggingIn: return "login"
        case .admin: return "admin"
        case .closing: return "closing"
        case .ready:
            if self.server != nil { return self.transactionStatus == .idle ? "active" : "in transaction" }
            return self.checkoutInProgress ? "waiting" : "idle"
        }
    }

    var serverID: Int? { self.server?.id }
    /// Statements of this client are with the batcher (shutdown waits for their commit).
    var awaitsBatches: Bool { !self.batchReplies.isEmpty }
    var isAdmin: Bool {
        if case .admin = self.phase { return true }
        return false
    }
}
