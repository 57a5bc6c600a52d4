import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PostgresWire

/// What a server connection reports to the client session that currently owns it. Called on the
/// connection's event loop.
protocol ServerConnectionOwner: AnyObject {
    /// One server message. `buffer` is the whole receive buffer it came from and `offset` its start in
    /// it, so the owner can forward runs of messages with one write.
    func serverFrame(_ frame: PostgresFrame, in buffer: ByteBuffer, at offset: Int, from server: ServerConnection)
    /// The end of one receive buffer: forward what is held back.
    func serverBufferDone(_ server: ServerConnection)
    func serverReadComplete(_ server: ServerConnection)
    func serverClosed(_ server: ServerConnection)
    func serverWritabilityChanged(_ server: ServerConnection, writable: Bool)
}

/// One connection from Tidegate to a PostgreSQL server. It lives on one event loop; its pool and the
/// client sessions that borrow it live on the same loop, so nothing here needs a lock.
// @unchecked Sendable: confined to one event loop; every access happens on that loop (callbacks of
// futures created on it run there too), so no two threads ever touch it.
final class ServerConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    enum State {
        case connecting(BackendStartupStateMachine, EventLoopPromise<Void>)
        /// Running a query of Tidegate's own (settings replay, liveness check, reset, health probe).
        case internalQuery(InternalQuery)
        case idle
        case owned
        case closed
    }

    static let nextID = IDGenerator()

    let id: Int
    let key: PoolKey
    let node: TidegateConfig.Node
    let loop: any EventLoop
    let logger: Logger
    private(set) var channel: (any Channel)?
    private(set) var state: State
    weak var owner: (any ServerConnectionOwner)?
    /// ParameterStatus values as the server last reported them.
    var parameters = ParameterSet()
    var backendKey: (processID: Int32, secretKey: Int32) = (0, 0)
    /// Server-side prepared statements this connection has, with a use counter for LRU eviction.
    var prepared: [String: UInt64] = [:]
    var useTick: UInt64 = 0
    /// The session settings (SET statements) in force on this connection beyond its startup state.
    var appliedSettings: [String] = []
    let createdAt: NIODeadline
    var lastUsedAt: NIODeadline
    var cancelsInFlight = 0
    /// Set when the connection must not be reused (error mid-transaction, protocol confusion).
    var mustClose = false
    var ownerDescription = ""
    /// Bytes received and not yet decoded into whole messages.
    private var inbound = ByteBuffer()
    private var decoder: PostgresFrameDecoder
    /// Sent in the startup packet after user and database (the replication listener's `replication`).
    private let startupParameters: [(String, String)]
    private static let emptyBuffer = ByteBuffer()

    init(
        key: PoolKey, node: TidegateConfig.Node, loop: any EventLoop, password: String?, maxMessageBytes: Int,
        logger: Logger, startupParameters: [(String, String)] = []
    ) {
        self.decoder = PostgresFrameDecoder(maxMessageBytes: maxMessageBytes)
        self.startupParameters = startupParameters
        self.id = Self.nextID.next()
        self.key = key
        self.node = node
        self.loop = loop
        var logger = logger
        logger[metadataKey: "tidegate.server.id"] = "\(self.id)"
        self.logger = logger
        self.state = .connecting(
            BackendStartupStateMachine(
                user: key.user, password: password,
                noPasswordAdvice: "Tidegate has none (set users.\(key.user).password or backend_password)"),
            loop.makePromise(of: Void.self))
        self.createdAt = .now()
        self.lastUsedAt = .now()
    }

    var isClosed: Bool {
        if case .closed = self.state { return true }
        return false
    }

    var isIdle: Bool {
        if case .idle = self.state { return true }
        return false
    }

    var stateName: String {
        switch self.state {
        case .connecting: return "connecting"
        case .internalQuery: return "internal"
        case .idle: return "idle"
        case .owned: return "active"
        case .closed: return "closed"
        }
    }

    /// Connects and logs in. The future succeeds when the server is ready for queries.
    func connect(connectTimeout: TimeAmount, maxMessageBytes: Int) -> EventLoopFuture<Void> {
        guard case .connecting(_, let promise) = self.state else {
            return self.loop.makeFailedFuture(TidegateError.serverUnavailable("connection is not new"))
        }
        let bootstrap = ClientBootstrap(group: self.loop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(self)
                }
            }
        bootstrap.connect(host: self.node.host, port: self.node.port).whenComplete { result in
            switch result {
            case .success(let channel):
                self.channel = channel
                guard case .connecting(let machine, _) = self.state else { return }
                var buffer = channel.allocator.buffer(capacity: 64)
                // Only user and database: every other setting is the client's (replayed as SET), so RESET on
                // the server connection gives the server's defaults.
                FrontendEncoder.startup(
                    &buffer,
                    parameters: [("user", self.key.user), ("database", self.key.database)] + self.startupParameters)
                _ = machine
                channel.writeAndFlush(buffer, promise: nil)
            case .failure(let error):
                self.state = .closed
                promise.fail(
                    TidegateError.serverUnavailable(
                        "cannot connect to \(self.node.host):\(self.node.port): \(error)"))
            }
        }
        let timeout = self.loop.scheduleTask(in: connectTimeout + .seconds(1)) {
            if case .connecting = self.state {
                self.fail(TidegateError.serverUnavailable("login to \(self.node.host):\(self.node.port) timed out"))
            }
        }
        promise.futureResult.whenComplete { _ in timeout.cancel() }
        return promise.futureResult
    }

    private func fail(_ error: any Error) {
        switch self.state {
        case .connecting(_, let promise):
            self.state = .closed
            promise.fail(error)
        case .internalQuery(let query):
            self.state = .closed
            query.promise.fail(error)
        case .idle, .owned, .closed:
            self.state = .closed
        }
        self.channel?.close(promise: nil)
    }

    /// Runs a statement of Tidegate's own and discards its results. Fails with the server's error.
    func runInternal(_ sql: String) -> EventLoopFuture<Void> {
        self.runInternalRows(sql).map { _ in () }
    }

    /// Runs statements of Tidegate's own (simple protocol) and returns the rows of all of them as text.
    /// Fails with the server's first error.
    func runInternalRows(_ sql: String) -> EventLoopFuture<[[String?]]> {
        guard let channel = self.channel, case .idle = self.state else {
            return self.loop.makeFailedFuture(TidegateError.serverUnavailable("server connection is not idle"))
        }
        let query = InternalQuery(promise: self.loop.makePromise())
        self.state = .internalQuery(query)
        var buffer = channel.allocator.buffer(capacity: sql.utf8.count + 6)
        FrontendEncoder.query(&buffer, sql)
        channel.writeAndFlush(buffer, promise: nil)
        return query.promise.futureResult
    }

    func attach(_ owner: any ServerConnectionOwner) {
        self.owner = owner
        self.state = .owned
        self.lastUsedAt = .now()
    }

    func detach() {
        self.owner = nil
        if case .owned = self.state { self.state = .idle }
        self.lastUsedAt = .now()
    }

    func write(_ buffer: ByteBuffer) {
        self.channel?.write(buffer, promise: nil)
    }

    func flush() {
        self.channel?.flush()
    }

    private var autoRead = true

    /// Turns reading from the server on or off (backpressure); a no-op when already so.
    func setAutoRead(_ on: Bool) {
        guard on != self.autoRead, let channel = self.channel else { return }
        self.autoRead = on
        channel.setOption(ChannelOptions.autoRead, value: on).whenFailure { _ in }
    }

    var isWritable: Bool { self.channel?.isWritable ?? false }

    func close() {
        if let channel = self.channel, !self.isClosed {
            var buffer = channel.allocator.buffer(capacity: 5)
            FrontendEncoder.terminate(&buffer)
            channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
        }
        self.fail(TidegateError.serverUnavailable("closed"))
    }

    /// Marks `name` as used and returns whether the connection already has it prepared.
    func touchPrepared(_ name: String) -> Bool {
        self.useTick &+= 1
        if self.prepared[name] != nil {
            self.prepared[name] = self.useTick
            return true
        }
        return false
    }

    // MARK: ChannelInboundHandler

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        if self.inbound.readableBytes == 0 {
            self.inbound = buffer
        } else {
            self.inbound.writeBuffer(&buffer)
        }
        do {
            while true {
                let offset = self.inbound.readerIndex
                guard let frame = try self.decoder.decode(buffer: &self.inbound) else { break }
                self.handle(frame, offset: offset, context: context)
                if self.isClosed { break }
            }
        } catch {
            self.logger.warning("server sent an invalid message; closing the connection", metadata: ["error": "\(error)"])
            self.mustClose = true
            context.close(promise: nil)
        }
        if case .owned = self.state { self.owner?.serverBufferDone(self) }
        if self.inbound.readableBytes == 0 {
            self.inbound = Self.emptyBuffer
        } else if self.inbound.readerIndex > 65536 {
            self.inbound.discardReadBytes()
        }
    }

    private func handle(_ frame: PostgresFrame, offset: Int, context: ChannelHandlerContext) {
        switch self.state {
        case .owned:
            if frame.id == BackendMessageID.parameterStatus.rawValue,
                let (name, value) = try? BackendMessage.parameterStatus(frame)
            {
                self.parameters[name] = value
            }
            if let owner = self.owner {
                var whole = self.inbound
                whole.moveReaderIndex(to: offset)
                owner.serverFrame(frame, in: whole, at: offset, from: self)
            } else {
                self.mustClose = true
            }
        case .connecting(var machine, let promise):
            let action = machine.received(frame)
            self.state = .connecting(machine, promise)
            switch action {
            case .wait:
                break
            case .send(let buffer):
                context.writeAndFlush(NIOAny(buffer), promise: nil)
            case .ready:
                self.parameters = ParameterSet(machine.parameters)
                self.backendKey = machine.backendKey
                self.state = .idle
                promise.succeed(())
            case .fail(let fields):
                self.state = .closed
                promise.fail(TidegateError.serverRefused(fields))
                context.close(promise: nil)
            }
        case .internalQuery(let query):
            switch frame.backendID {
            case .errorResponse:
                let fields = (try? BackendMessage.errorFields(frame)) ?? ErrorFields(severity: "ERROR", sqlState: "XX000", message: "unknown error")
                if query.error == nil { query.error = fields }
            case .dataRow:
                if let row = Self.textRow(frame) { query.rows.append(row) }
            case .parameterStatus:
                if let (name, value) = try? BackendMessage.parameterStatus(frame) { self.parameters[name] = value }
            case .readyForQuery:
                self.state = .idle
                if let error = query.error {
                    query.promise.fail(TidegateError.serverRefused(error))
                } else {
                    query.promise.succeed(query.rows)
                }
            default:
                break
            }
        case .idle:
            // Nothing is expected from an idle server except asynchronous messages.
            switch frame.backendID {
            case .parameterStatus:
                if let (name, value) = try? BackendMessage.parameterStatus(frame) { self.parameters[name] = value }
            case .errorResponse:
                self.logger.warning("idle server connection reported an error; closing it")
                self.fail(TidegateError.serverUnavailable("server reported an error while idle"))
            default:
                break
            }
        case .closed:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .owned = self.state { self.owner?.serverReadComplete(self) }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .owned = self.state { self.owner?.serverWritabilityChanged(self, writable: context.channel.isWritable) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let wasOwned: Bool
        if case .owned = self.state { wasOwned = true } else { wasOwned = false }
        self.fail(TidegateError.serverUnavailable("server closed the connection"))
        if wasOwned, let owner = self.owner {
            self.owner = nil
            owner.serverClosed(self)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("server connection error: \(error)")
        context.close(promise: nil)
    }
}

/// The result of a query of Tidegate's own, collected as it arrives.
final class InternalQuery {
    let promise: EventLoopPromise<[[String?]]>
    var rows: [[String?]] = []
    var error: ErrorFields?

    init(promise: EventLoopPromise<[[String?]]>) { self.promise = promise }
}

extension ServerConnection {
    /// The columns of a DataRow as text (NULL as nil); nil when the message is malformed.
    static func textRow(_ frame: PostgresFrame) -> [String?]? {
        var body = frame.body
        guard let count = body.readInteger(as: Int16.self), count >= 0 else { return nil }
        var row: [String?] = []
        row.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let length = body.readInteger(as: Int32.self) else { return nil }
            if length < 0 {
                row.append(nil)
            } else {
                guard let bytes = body.readSlice(length: Int(length)) else { return nil }
                row.append(String(buffer: bytes))
            }
        }
        return row
    }
}

/// A process-wide increasing id source.
final class IDGenerator: Sendable {
    private let counter = NIOLockedValueBox(0)
    func next() -> Int { self.counter.withLockedValue { $0 += 1; return $0 } }
}

/// Errors inside Tidegate; `clientFields` is what a client is told.
enum TidegateError: Error, CustomStringConvertible {
    case serverUnavailable(String)
    case serverRefused(ErrorFields)
    case poolTimeout(String)

    var description: String {
        switch self {
        case .serverUnavailable(let message): return message
        case .serverRefused(let fields): return fields.message ?? "server refused"
        case .poolTimeout(let message): return message
        }
    }

    var clientFields: ErrorFields {
        switch self {
        case .serverUnavailable(let message):
            return ErrorFields(severity: "FATAL", sqlState: "08006", message: "server connection failed: \(message)")
        case .serverRefused(let fields):
            return fields
        case .poolTimeout(let message):
            return ErrorFields(severity: "FATAL", sqlState: "53300", message: message)
        }
    }
}
