import NIOCore
import PostgresWire

/// The admin console: the virtual database `tidegate`. Commands come as simple queries (psql) or as
/// Parse/Bind/Execute (drivers); results are ordinary rows.
// @unchecked Sendable: confined to one event loop; every access happens on that loop (callbacks of
// futures created on it run there too), so no two threads ever touch it.
final class AdminSession: @unchecked Sendable {
    let runtime: Runtime
    private var preparedQuery: String?
    private var failedUntilSync = false
    /// Messages that arrived while a command ran; answered in order once it is done.
    private var queued: [PostgresFrame] = []
    private var busy = false
    /// The result of a command run for Describe, sent by the following Execute.
    private var described: AdminResult?

    enum Step {
        case simple
        case describe
        case execute
    }

    static let parameters: [String: String] = [
        "server_version": "15.0 (Tidegate admin console)", "server_encoding": "UTF8", "client_encoding": "UTF8",
        "DateStyle": "ISO, MDY", "TimeZone": "UTC", "integer_datetimes": "on", "standard_conforming_strings": "on",
        "IntervalStyle": "postgres", "is_superuser": "off", "application_name": "",
    ]

    init(runtime: Runtime) {
        self.runtime = runtime
    }

    /// Handles one message; returns true when the connection should close.
    func handle(_ frame: PostgresFrame, context: ChannelHandlerContext, session: ClientSession) -> Bool {
        if self.busy {
            self.queued.append(frame)
            return false
        }
        guard let id = frame.frontendID else {
            session.fatal(ErrorFields(severity: "FATAL", sqlState: "08P01", message: "unknown message type \(frame.id)"))
            return false
        }
        switch id {
        case .terminate:
            return true
        case .query:
            guard let query = try? FrontendMessage.query(frame) else {
                session.fatal(ErrorFields(severity: "FATAL", sqlState: "08P01", message: "malformed Query"))
                return false
            }
            self.run(query, context: context, step: .simple) { buffer in
                BackendEncoder.readyForQuery(&buffer, status: .idle)
            }
        case .parse:
            guard let parse = try? FrontendMessage.parse(frame) else { return self.malformed(session) }
            if self.failedUntilSync { return false }
            self.preparedQuery = parse.query
            self.write(context) { BackendEncoder.simple(&$0, .parseComplete) }
        case .bind:
            if self.failedUntilSync { return false }
            self.write(context) { BackendEncoder.simple(&$0, .bindComplete) }
        case .describe:
            if self.failedUntilSync { return false }
            let isStatement = (try? FrontendMessage.describe(frame))?.kind == UInt8(ascii: "S")
            if isStatement { self.write(context) { BackendEncoder.parameterDescription(&$0, types: []) } }
            // The row shape is only known by running the command: run it now, keep the rows for Execute.
            self.run(self.preparedQuery ?? "", context: context, step: .describe) { _ in }
        case .execute:
            if self.failedUntilSync { return false }
            if let result = self.described {
                self.described = nil
                var buffer = context.channel.allocator.buffer(capacity: 1024)
                Self.encode(result, into: &buffer, rowDescription: false)
                context.write(NIOAny(buffer), promise: nil)
            } else {
                self.run(self.preparedQuery ?? "", context: context, step: .execute) { _ in }
            }
        case .sync:
            self.failedUntilSync = false
            self.described = nil
            self.write(context) { BackendEncoder.readyForQuery(&$0, status: .idle) }
        case .close:
            if self.failedUntilSync { return false }
            self.write(context) { BackendEncoder.simple(&$0, .closeComplete) }
        case .flush:
            context.flush()
        case .copyData, .copyDone, .copyFail, .functionCall, .password:
            self.write(context) {
                BackendEncoder.errorResponse(
                    &$0, ErrorFields(severity: "ERROR", sqlState: "0A000", message: "not supported by the admin console"))
            }
            self.failedUntilSync = true
        }
        return false
    }

    private func malformed(_ session: ClientSession) -> Bool {
        session.fatal(ErrorFields(severity: "FATAL", sqlState: "08P01", message: "malformed message"))
        return false
    }

    private func write(_ context: ChannelHandlerContext, _ body: (inout ByteBuffer) -> Void) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        body(&buffer)
        context.write(NIOAny(buffer), promise: nil)
    }

    private func run(
        _ query: String, context: ChannelHandlerContext, step: Step,
        then finish: @escaping (inout ByteBuffer) -> Void
    ) {
        let loop = context.eventLoop
        let runtime = self.runtime
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        let promise = loop.makePromise(of: AdminResult.self)
        self.busy = true
        promise.completeWithTask {
            await AdminCommands(runtime: runtime).execute(query)
        }
        promise.futureResult.whenSuccess { result in
            let (admin, context) = bound.value
            var buffer = context.channel.allocator.buffer(capacity: 1024)
            switch step {
            case .simple:
                Self.encode(result, into: &buffer, rowDescription: true)
            case .execute:
                Self.encode(result, into: &buffer, rowDescription: false)
                if case .error = result { admin.failedUntilSync = true }
            case .describe:
                switch result {
                case .rows(let columns, _, _):
                    BackendEncoder.rowDescription(&buffer, columns: columns.map { ($0, 25) })
                    admin.described = result
                case .command, .empty:
                    BackendEncoder.simple(&buffer, .noData)
                    admin.described = result
                case .error(let fields):
                    BackendEncoder.errorResponse(&buffer, fields)
                    admin.failedUntilSync = true
                }
            }
            finish(&buffer)
            context.writeAndFlush(NIOAny(buffer), promise: nil)
            admin.busy = false
            let queued = admin.queued
            admin.queued.removeAll()
            for (index, frame) in queued.enumerated() {
                if admin.busy {
                    admin.queued.append(contentsOf: queued[index...])
                    break
                }
                if let session = context.handler as? ClientSession, admin.handle(frame, context: context, session: session) {
                    context.close(promise: nil)
                    return
                }
            }
            context.flush()
        }
    }

    static func encode(_ result: AdminResult, into buffer: inout ByteBuffer, rowDescription: Bool) {
        switch result {
        case .rows(let columns, let rows, let tag):
            if rowDescription { BackendEncoder.rowDescription(&buffer, columns: columns.map { ($0, 25) }) }
            for row in rows { BackendEncoder.dataRow(&buffer, values: row) }
            BackendEncoder.commandComplete(&buffer, tag: tag)
        case .command(let tag):
            BackendEncoder.commandComplete(&buffer, tag: tag)
        case .empty:
            BackendEncoder.emptyQueryResponse(&buffer)
        case .error(let fields):
            BackendEncoder.errorResponse(&buffer, fields)
        }
    }
}

enum AdminResult: Sendable {
    case rows(columns: [String], rows: [[String?]], tag: String)
    case command(String)
    case empty
    case error(ErrorFields)
}
