import NIOCore

/// One typed protocol message as it arrived: the whole frame (type byte, length, body) kept as a
/// slice of the receive buffer so that forwarding it copies nothing.
public struct PostgresFrame: Sendable, Equatable {
    /// The message type byte.
    public var id: UInt8
    /// The complete frame: 1 byte type, 4 bytes length, body.
    public var raw: ByteBuffer

    public init(id: UInt8, raw: ByteBuffer) {
        self.id = id
        self.raw = raw
    }

    /// Builds a frame from a type byte and a body.
    public init(id: UInt8, body: ByteBuffer) {
        var raw = ByteBuffer()
        raw.reserveCapacity(body.readableBytes + 5)
        raw.writeInteger(id)
        raw.writeInteger(Int32(body.readableBytes + 4))
        var body = body
        raw.writeBuffer(&body)
        self.init(id: id, raw: raw)
    }

    /// The body without the 5 header bytes.
    public var body: ByteBuffer {
        self.raw.getSlice(at: self.raw.readerIndex + 5, length: self.raw.readableBytes - 5) ?? ByteBuffer()
    }

    public var frontendID: FrontendMessageID? { FrontendMessageID(rawValue: self.id) }
    public var backendID: BackendMessageID? { BackendMessageID(rawValue: self.id) }
}

/// A protocol violation found while decoding. Every case becomes SQLSTATE 08P01 for a client.
public enum WireError: Error, Equatable, Sendable {
    case invalidLength(Int)
    case messageTooLarge(Int, limit: Int)
    case invalidStartupPacket(String)
    case malformedMessage(String)
    case unexpectedMessage(String)

    public var message: String {
        switch self {
        case .invalidLength(let length): return "invalid message length \(length)"
        case .messageTooLarge(let length, let limit):
            return "message length \(length) exceeds the limit of \(limit) bytes"
        case .invalidStartupPacket(let why): return "invalid startup packet: \(why)"
        case .malformedMessage(let why): return "malformed message: \(why)"
        case .unexpectedMessage(let why): return "unexpected message: \(why)"
        }
    }
}
