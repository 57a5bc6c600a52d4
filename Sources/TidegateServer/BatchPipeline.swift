import NIOCore
import PostgresWire

/// What one Sync-terminated unit (or simple Query) of a pipeline returned.
struct PipelineUnitResult {
    /// The message types received before the unit ended (ParseComplete, BindComplete, NoData…), in order.
    var messages: [UInt8] = []
    var parameterTypes: [UInt32]?
    var rows: [[String?]] = []
    var tags: [String] = []
    var error: ErrorFields?
}

/// Runs a written pipeline of `units` Sync-terminated units on a server connection it owns meanwhile, and
/// collects each unit's results. Fails with `BatchPipelineError.connectionLost` when the connection goes
/// away before the last ReadyForQuery.
final class BatchPipeline: ServerConnectionOwner {
    private let server: ServerConnection
    private let expected: Int
    private var results: [PipelineUnitResult] = []
    private var current = PipelineUnitResult()
    private let promise: EventLoopPromise<[PipelineUnitResult]>
    private var finished = false
    /// The connection holds its owner weakly: the pipeline keeps itself alive until it has finished.
    private var keepAlive: BatchPipeline?

    private init(server: ServerConnection, units: Int) {
        self.server = server
        self.expected = units
        self.promise = server.loop.makePromise()
        self.results.reserveCapacity(units)
    }

    /// Writes `messages` (which hold `units` Syncs or simple Queries) and waits for every unit's end.
    static func run(_ messages: ByteBuffer, units: Int, on server: ServerConnection) -> EventLoopFuture<[PipelineUnitResult]> {
        let pipeline = BatchPipeline(server: server, units: units)
        guard !server.isClosed else {
            return server.loop.makeFailedFuture(BatchPipelineError.connectionLost(sent: false))
        }
        pipeline.keepAlive = pipeline
        server.attach(pipeline)
        server.write(messages)
        server.flush()
        return pipeline.promise.futureResult
    }

    func serverFrame(_ frame: PostgresFrame, in buffer: ByteBuffer, at offset: Int, from server: ServerConnection) {
        guard !self.finished, let id = frame.backendID else { return }
        switch id {
        case .readyForQuery:
            self.results.append(self.current)
            self.current = PipelineUnitResult()
            if self.results.count == self.expected {
                self.finished = true
                self.keepAlive = nil
                server.detach()
                self.promise.succeed(self.results)
            }
        case .errorResponse:
            if self.current.error == nil {
                self.current.error = (try? BackendMessage.errorFields(frame))
                    ?? ErrorFields(severity: "ERROR", sqlState: "XX000", message: "unreadable error from the server")
            }
        case .dataRow:
            if let row = ServerConnection.textRow(frame) { self.current.rows.append(row) }
        case .commandComplete:
            if let tag = try? BackendMessage.commandTag(frame) { self.current.tags.append(tag) }
            self.current.messages.append(frame.id)
        case .parameterDescription:
            var body = frame.body
            if let count = body.readInteger(as: Int16.self), count >= 0 {
                var types: [UInt32] = []
                for _ in 0..<count {
                    guard let oid = body.readInteger(as: UInt32.self) else { break }
                    types.append(oid)
                }
                self.current.parameterTypes = types
            }
            self.current.messages.append(frame.id)
        case .parseComplete, .bindComplete, .noData, .rowDescription, .closeComplete, .emptyQueryResponse:
            self.current.messages.append(frame.id)
        case .copyInResponse, .copyOutResponse, .copyBothResponse:
            // Never asked for: the connection's state is unknown.
            server.mustClose = true
            self.fail()
        case .authentication, .backendKeyData, .copyData, .copyDone, .functionCallResponse, .negotiateProtocolVersion,
            .noticeResponse, .notificationResponse, .parameterStatus, .portalSuspended:
            break
        }
    }

    private func fail() {
        guard !self.finished else { return }
        self.finished = true
        self.keepAlive = nil
        self.server.detach()
        self.promise.fail(BatchPipelineError.connectionLost(sent: true))
    }

    /// Appends one statement of Tidegate's own as one unit: Parse (unnamed), Bind of `values` (text), Execute,
    /// Sync.
    static func appendStatement(_ buffer: inout ByteBuffer, _ sql: String, parameterTypes: [UInt32] = [], values: [ByteBuffer?] = []) {
        FrontendEncoder.parse(&buffer, name: "", query: sql, parameterTypes: parameterTypes)
        FrontendEncoder.bind(&buffer, portal: "", statement: "", parameterFormats: [], values: values, resultFormats: [])
        FrontendEncoder.execute(&buffer, portal: "")
        FrontendEncoder.sync(&buffer)
    }

    func serverBufferDone(_ server: ServerConnection) {}
    func serverReadComplete(_ server: ServerConnection) {}
    func serverClosed(_ server: ServerConnection) { self.fail() }
    func serverWritabilityChanged(_ server: ServerConnection, writable: Bool) {}
}

enum BatchPipelineError: Error {
    /// The connection went away; `sent` when the messages may have reached the server.
    case connectionLost(sent: Bool)
}
