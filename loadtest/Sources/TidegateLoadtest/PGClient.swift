import Foundation
import LoadtestCore
import NIOCore
import NIOPosix
import PostgresWire

/// Why a connection could not be made or was lost, in words for the person running the tool.
struct ConnectError: Error, CustomStringConvertible {
    var description: String
    /// The server's SQLSTATE when it refused us (28P01, 3D000…).
    var sqlState: String?
}

/// The reply to one request (everything up to ReadyForQuery).
struct Reply {
    var rows: Int = 0
    var error: ErrorFields?
    var columns: [String] = []
    /// Only when the request asked for them (admin commands, the preflight).
    var values: [[String?]] = []
}

/// A lean PostgreSQL client on one event loop: startup and authentication (cleartext, MD5,
/// SCRAM-SHA-256), then one request at a time, replied to at ReadyForQuery. Requests are pre-encoded
/// messages, so the load engine sends exactly what pgbench and libpq send (Query; Parse Bind Describe
/// Execute Sync; Bind Describe Execute Sync) at little CPU cost per statement.
// @unchecked Sendable: every access happens on the channel's event loop.
final class PGConnection: @unchecked Sendable {
    let channel: any Channel
    private let handler: ClientHandler

    private init(channel: any Channel, handler: ClientHandler) {
        self.channel = channel
        self.handler = handler
    }

    var eventLoop: any EventLoop { self.channel.eventLoop }

    static func connect(_ spec: ConnectionSpec, on loop: any EventLoop, timeout: TimeAmount = .seconds(10)) -> EventLoopFuture<PGConnection> {
        if let mode = spec.sslmode, !["disable", "allow", "prefer"].contains(mode) {
            return loop.makeFailedFuture(ConnectError(description: "sslmode=\(mode) is not supported by tidegate-loadtest (it connects in plaintext); use sslmode=disable"))
        }
        let handler = ClientHandler(spec: spec, ready: loop.makePromise())
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(PostgresFrameDecoder(maxMessageBytes: 1 << 30)))
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        let connected = bootstrap.connect(host: spec.host, port: spec.port)
            .flatMapError { error in
                let failure = ConnectError(description: "cannot connect to \(spec.host):\(spec.port): \(Self.describe(error)); is the server running there?")
                handler.fail(failure)  // its startup promise must not be left pending
                return loop.makeFailedFuture(failure)
            }
        return connected.flatMap { channel in
            let timeoutTask = loop.scheduleTask(in: timeout) {
                handler.fail(ConnectError(description: "no reply to the startup from \(spec.host):\(spec.port) within \(timeout.nanoseconds / 1_000_000_000) s"))
                channel.close(promise: nil)
            }
            return handler.ready.futureResult.map { PGConnection(channel: channel, handler: handler) }
                .always { _ in timeoutTask.cancel() }
                .flatMapErrorThrowing { error in
                    channel.close(promise: nil)
                    throw error
                }
        }
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)) }
        if let error = error as? NIOConnectionError {
            if let first = error.connectionErrors.first { return Self.describe(first.error) }
            return "no address to connect to (\(error.host))"
        }
        if error is ChannelError { return "\(error)" }
        return "\(error)"
    }

    /// Sends pre-encoded messages (ending in Sync or a Query); `completion` runs on the loop at
    /// ReadyForQuery, or with an error when the connection is lost first.
    func send(_ request: ByteBuffer, collect: Bool = false, completion: @escaping (Result<Reply, ConnectError>) -> Void) {
        self.handler.start(collect: collect, completion: completion)
        self.channel.writeAndFlush(request, promise: nil)
    }

    /// One simple query with its rows as text.
    func query(_ sql: String) -> EventLoopFuture<Reply> {
        var buffer = self.channel.allocator.buffer(capacity: sql.utf8.count + 6)
        FrontendEncoder.query(&buffer, sql)
        let promise = self.eventLoop.makePromise(of: Reply.self)
        let request = buffer
        self.eventLoop.execute {
            self.send(request, collect: true) { result in
                switch result {
                case .success(let reply): promise.succeed(reply)
                case .failure(let error): promise.fail(error)
                }
            }
        }
        return promise.futureResult
    }

    func close() {
        var buffer = self.channel.allocator.buffer(capacity: 5)
        FrontendEncoder.terminate(&buffer)
        self.channel.writeAndFlush(buffer).whenComplete { _ in self.channel.close(promise: nil) }
    }
}

private final class ClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = PostgresFrame
    typealias OutboundOut = ByteBuffer

    let spec: ConnectionSpec
    let ready: EventLoopPromise<Void>
    private var started = false
    private var login: BackendStartupStateMachine
    private var completion: ((Result<Reply, ConnectError>) -> Void)?
    private var reply = Reply()
    private var collect = false
    /// Set when the connection has closed: every later request fails with it.
    private var lost: ConnectError?

    init(spec: ConnectionSpec, ready: EventLoopPromise<Void>) {
        self.spec = spec
        self.ready = ready
        self.login = BackendStartupStateMachine(
            user: spec.user, password: spec.password, noPasswordAdvice: "none is given (password= in the connection string, or PGPASSWORD)")
    }

    func fail(_ error: ConnectError) {
        if !self.started {
            self.started = true
            self.ready.fail(error)
        }
    }

    func start(collect: Bool, completion: @escaping (Result<Reply, ConnectError>) -> Void) {
        if let lost = self.lost {
            // Closed between two requests (an open-loop client waiting for its next slot): nothing
            // would ever answer, so the request fails now.
            completion(.failure(lost))
            return
        }
        self.collect = collect
        self.reply = Reply()
        self.completion = completion
    }

    func channelActive(context: ChannelHandlerContext) {
        var parameters = [("user", self.spec.user), ("database", self.spec.database), ("client_encoding", "UTF8")]
        parameters.append(("application_name", self.spec.applicationName ?? "tidegate-loadtest"))
        var buffer = context.channel.allocator.buffer(capacity: 128)
        FrontendEncoder.startup(&buffer, parameters: parameters)
        context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        if !self.started {
            self.startup(frame, context: context)
            return
        }
        switch frame.id {
        case BackendMessageID.dataRow.rawValue:
            self.reply.rows += 1
            if self.collect { self.reply.values.append(Self.values(frame)) }
        case BackendMessageID.rowDescription.rawValue:
            if self.collect { self.reply.columns = Self.columns(frame) }
        case BackendMessageID.errorResponse.rawValue:
            // Outside a request this is the server's reason for closing (57P01…): kept for the loss.
            if self.reply.error == nil { self.reply.error = try? BackendMessage.errorFields(frame) }
        case BackendMessageID.readyForQuery.rawValue:
            let completion = self.completion
            self.completion = nil
            let reply = self.reply
            self.reply = Reply()
            completion?(.success(reply))
        default:
            break
        }
    }

    private func startup(_ frame: PostgresFrame, context: ChannelHandlerContext) {
        switch self.login.received(frame) {
        case .send(let buffer):
            context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
        case .wait:
            break
        case .ready:
            self.started = true
            self.ready.succeed(())
        case .fail(let fields):
            // The server's refusal gets advice by its SQLSTATE; the login's own failures say what to do.
            let refused = frame.backendID == .errorResponse
            self.fail(refused ? Self.startupError(fields, spec: self.spec) : ConnectError(description: fields.message ?? "login failed", sqlState: fields.sqlState))
            context.close(promise: nil)
        }
    }

    static func startupError(_ fields: ErrorFields, spec: ConnectionSpec) -> ConnectError {
        let code = fields.sqlState ?? "?????"
        let message = fields.message ?? "the server refused the connection"
        let advice: String
        switch code {
        case "28P01": advice = "check the password (password= in the connection string, or PGPASSWORD)"
        case "28000": advice = "check the user name and pg_hba.conf / the proxy's users"
        case "3D000": advice = "create the database or point dbname at one that exists"
        case "53300": advice = "the server has no connection slot left; use fewer clients or raise its limit"
        case "57P03": advice = "the server is starting up or shutting down; try again"
        default: advice = "see the server's log"
        }
        return ConnectError(description: "\(message) (SQLSTATE \(code)): \(advice)", sqlState: code)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !self.started {
            self.fail(ConnectError(description: "\(self.spec.host):\(self.spec.port) closed the connection during startup"))
        }
        // The server's last error (FATAL 57P01 when it was terminated) says why; otherwise 08006.
        let lost = ConnectError(
            description: self.reply.error.map { "connection lost: \($0.message ?? "")" } ?? "connection lost",
            sqlState: self.reply.error?.sqlState ?? "08006")
        self.lost = lost
        let completion = self.completion
        self.completion = nil
        completion?(.failure(lost))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(ConnectError(description: "\(self.spec.host):\(self.spec.port): \(error)"))
        context.close(promise: nil)
    }

    static func columns(_ frame: PostgresFrame) -> [String] {
        var body = frame.body
        guard let count = body.readInteger(as: Int16.self) else { return [] }
        var names: [String] = []
        for _ in 0..<max(0, Int(count)) {
            guard let name = body.readNullTerminatedString() else { break }
            names.append(name)
            body.moveReaderIndex(forwardBy: min(18, body.readableBytes))
        }
        return names
    }

    static func values(_ frame: PostgresFrame) -> [String?] {
        var body = frame.body
        guard let count = body.readInteger(as: Int16.self) else { return [] }
        var values: [String?] = []
        for _ in 0..<max(0, Int(count)) {
            guard let length = body.readInteger(as: Int32.self) else { break }
            if length < 0 {
                values.append(nil)
            } else {
                values.append(body.readString(length: Int(length)))
            }
        }
        return values
    }
}
