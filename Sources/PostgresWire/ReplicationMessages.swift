import NIOCore

/// Type bytes of the streaming replication messages a server sends inside CopyData after
/// START_REPLICATION.
public enum ReplicationMessageID: UInt8, Sendable {
    case xLogData = 119  // w
    case primaryKeepalive = 107  // k
}

/// What a walsender sends inside CopyData: WAL data (for a logical slot, one output-plugin message) or a
/// keepalive. https://www.postgresql.org/docs/15/protocol-replication.html
public enum ReplicationMessage: Sendable, Equatable {
    /// `data` is the output plugin's message, a slice of the frame.
    case xLogData(walStart: UInt64, walEnd: UInt64, sendTime: Int64, data: ByteBuffer)
    /// `walEnd` is how far the walsender has sent; a logical one has decoded all WAL before it.
    case primaryKeepalive(walEnd: UInt64, sendTime: Int64, replyRequested: Bool)

    /// Decodes the body of a server's CopyData frame.
    public static func decode(copyData frame: PostgresFrame) throws(WireError) -> ReplicationMessage {
        var body = frame.body
        guard let id = body.readInteger(as: UInt8.self) else { throw WireError.malformedMessage("empty CopyData") }
        switch ReplicationMessageID(rawValue: id) {
        case .xLogData:
            guard let start = body.readInteger(as: UInt64.self), let end = body.readInteger(as: UInt64.self),
                let time = body.readInteger(as: Int64.self)
            else { throw WireError.malformedMessage("XLogData header") }
            return .xLogData(walStart: start, walEnd: end, sendTime: time, data: body)
        case .primaryKeepalive:
            guard let end = body.readInteger(as: UInt64.self), let time = body.readInteger(as: Int64.self),
                let reply = body.readInteger(as: UInt8.self), body.readableBytes == 0
            else { throw WireError.malformedMessage("primary keepalive") }
            return .primaryKeepalive(walEnd: end, sendTime: time, replyRequested: reply != 0)
        case nil:
            throw WireError.unexpectedMessage("replication message type \(id)")
        }
    }
}

extension FrontendEncoder {
    /// A standby status update ('r') in CopyData: the positions written, flushed and applied, the
    /// client's clock (microseconds since 2000-01-01) and whether the server should answer at once with
    /// a keepalive.
    public static func standbyStatusUpdate(
        _ buffer: inout ByteBuffer, written: UInt64, flushed: UInt64, applied: UInt64, clock: Int64,
        replyRequested: Bool
    ) {
        buffer.writePostgresMessage(id: FrontendMessageID.copyData.rawValue) {
            $0.writeInteger(UInt8(ascii: "r"))
            $0.writeInteger(written)
            $0.writeInteger(flushed)
            $0.writeInteger(applied)
            $0.writeInteger(clock)
            $0.writeInteger(UInt8(replyRequested ? 1 : 0))
        }
    }

    /// CopyDone: ends the client's side of a CopyBoth stream.
    public static func copyDone(_ buffer: inout ByteBuffer) {
        buffer.writePostgresMessage(id: FrontendMessageID.copyDone.rawValue) { _ in }
    }
}
