import NIOCore

/// Splits a byte stream into typed frames (everything after the startup phase, both directions).
/// Lengths are bounded: below 4 or above `maxMessageBytes` is a protocol violation.
public struct PostgresFrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = PostgresFrame

    public let maxMessageBytes: Int

    public init(maxMessageBytes: Int) {
        self.maxMessageBytes = maxMessageBytes
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> PostgresFrame? {
        guard buffer.readableBytes >= 5,
            let id = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
            let length = buffer.getInteger(at: buffer.readerIndex + 1, as: Int32.self)
        else { return nil }
        guard length >= 4 else { throw WireError.invalidLength(Int(length)) }
        guard Int(length) <= self.maxMessageBytes else {
            throw WireError.messageTooLarge(Int(length), limit: self.maxMessageBytes)
        }
        guard buffer.readableBytes >= Int(length) + 1, let raw = buffer.readSlice(length: Int(length) + 1) else {
            return nil
        }
        return PostgresFrame(id: id, raw: raw)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> PostgresFrame? {
        try self.decode(buffer: &buffer)
    }
}
