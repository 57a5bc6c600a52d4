import NIOCore
import Testing

@testable import PostgresWire

/// The streaming replication messages inside CopyData, from
/// https://www.postgresql.org/docs/15/protocol-replication.html.
@Suite struct ReplicationMessageTests {
    static func copyData(_ bytes: [UInt8]) -> PostgresFrame {
        PostgresFrame(id: BackendMessageID.copyData.rawValue, body: ByteBuffer(bytes: bytes))
    }

    static func be64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) } }

    @Test func xLogData() throws {
        let frame = Self.copyData(
            [UInt8(ascii: "w")] + Self.be64(0x1_0000_0010) + Self.be64(0x1_0000_0020) + Self.be64(7) + [66, 1, 2])
        #expect(
            try ReplicationMessage.decode(copyData: frame)
                == .xLogData(
                    walStart: 0x1_0000_0010, walEnd: 0x1_0000_0020, sendTime: 7, data: ByteBuffer(bytes: [66, 1, 2])))
    }

    @Test func primaryKeepalive() throws {
        let frame = Self.copyData([UInt8(ascii: "k")] + Self.be64(0xABCD) + Self.be64(9) + [1])
        #expect(
            try ReplicationMessage.decode(copyData: frame)
                == .primaryKeepalive(walEnd: 0xABCD, sendTime: 9, replyRequested: true))
    }

    @Test func malformedMessagesAreErrors() {
        let keepalive = [UInt8(ascii: "k")] + Self.be64(1) + Self.be64(2) + [0]
        let xLogData = [UInt8(ascii: "w")] + Self.be64(1) + Self.be64(2) + Self.be64(3)
        var cases: [[UInt8]] = [[], [UInt8(ascii: "q")], keepalive + [0]]
        cases += (0..<keepalive.count).map { Array(keepalive.prefix($0)) }
        cases += (1..<xLogData.count).map { Array(xLogData.prefix($0)) }
        for bytes in cases {
            #expect(throws: WireError.self, "\(bytes)") {
                try ReplicationMessage.decode(copyData: Self.copyData(bytes))
            }
        }
    }

    @Test func standbyStatusUpdate() {
        var buffer = ByteBuffer()
        FrontendEncoder.standbyStatusUpdate(
            &buffer, written: 0x10, flushed: 0x20, applied: 0x30, clock: 0x40, replyRequested: true)
        let expected: [UInt8] =
            [UInt8(ascii: "d"), 0, 0, 0, 38, UInt8(ascii: "r")] + Self.be64(0x10) + Self.be64(0x20) + Self.be64(0x30)
            + Self.be64(0x40) + [1]
        #expect(buffer.readableBytesView.elementsEqual(expected))
    }
}
