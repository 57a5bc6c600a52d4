import NIOCore

/// The untyped packets a client may send before the typed-message phase.
public enum StartupPacket: Sendable, Equatable {
    /// StartupMessage: protocol version and parameters in the order sent.
    case startup(major: UInt16, minor: UInt16, parameters: [(String, String)])
    case sslRequest
    case gssEncRequest
    case cancel(processID: Int32, secretKey: Int32)

    public static func == (lhs: StartupPacket, rhs: StartupPacket) -> Bool {
        switch (lhs, rhs) {
        case (.startup(let a, let b, let p), .startup(let c, let d, let q)):
            return a == c && b == d && p.elementsEqual(q, by: { $0 == $1 })
        case (.sslRequest, .sslRequest), (.gssEncRequest, .gssEncRequest): return true
        case (.cancel(let a, let b), .cancel(let c, let d)): return a == c && b == d
        default: return false
        }
    }

    public static let sslRequestCode: Int32 = 80_877_103
    public static let gssEncRequestCode: Int32 = 80_877_104
    public static let cancelRequestCode: Int32 = 80_877_102
    /// PostgreSQL's own bound (MAX_STARTUP_PACKET_LENGTH).
    public static let maxLength = 10_000
}

/// Decodes one startup-phase packet. Lengths outside 8...10,000 are rejected.
public struct StartupPacketDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = StartupPacket

    public init() {}

    public mutating func decode(buffer: inout ByteBuffer) throws -> StartupPacket? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: Int32.self) else { return nil }
        guard length >= 8, Int(length) <= StartupPacket.maxLength else {
            throw WireError.invalidStartupPacket("length \(length) is out of range")
        }
        guard buffer.readableBytes >= Int(length), var packet = buffer.readSlice(length: Int(length)) else {
            return nil
        }
        packet.moveReaderIndex(forwardBy: 4)
        guard let code = packet.readInteger(as: Int32.self) else {
            throw WireError.invalidStartupPacket("truncated")
        }
        switch code {
        case StartupPacket.sslRequestCode:
            guard packet.readableBytes == 0 else { throw WireError.invalidStartupPacket("SSLRequest has a body") }
            return .sslRequest
        case StartupPacket.gssEncRequestCode:
            guard packet.readableBytes == 0 else {
                throw WireError.invalidStartupPacket("GSSENCRequest has a body")
            }
            return .gssEncRequest
        case StartupPacket.cancelRequestCode:
            guard let pid = packet.readInteger(as: Int32.self), let key = packet.readInteger(as: Int32.self),
                packet.readableBytes == 0
            else { throw WireError.invalidStartupPacket("CancelRequest must be 16 bytes") }
            return .cancel(processID: pid, secretKey: key)
        default:
            let major = UInt16(truncatingIfNeeded: code >> 16)
            let minor = UInt16(truncatingIfNeeded: code & 0xFFFF)
            guard major == 3 else {
                throw WireError.invalidStartupPacket(
                    "unsupported frontend protocol \(major).\(minor): server supports 3.0")
            }
            var parameters: [(String, String)] = []
            while true {
                guard let key = packet.readNullTerminatedString() else {
                    throw WireError.invalidStartupPacket("parameter name is not terminated")
                }
                if key.isEmpty { break }
                guard let value = packet.readNullTerminatedString() else {
                    throw WireError.invalidStartupPacket("missing value for parameter \"\(key)\"")
                }
                parameters.append((key, value))
            }
            guard packet.readableBytes == 0 else {
                throw WireError.invalidStartupPacket("data after the parameter list")
            }
            return .startup(major: major, minor: minor, parameters: parameters)
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> StartupPacket? {
        try self.decode(buffer: &buffer)
    }
}
