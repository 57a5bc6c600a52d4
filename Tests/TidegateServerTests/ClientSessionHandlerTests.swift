import Logging
import NIOCore
import NIOEmbedded
import PostgresWire
import Testing

@testable import TidegateServer

/// ClientSession driven through an EmbeddedChannel: bytes in, bytes out, no sockets and no server.
/// Everything here happens before a server connection is needed.
@Suite struct ClientSessionHandlerTests {
    final class Harness {
        let channel: EmbeddedChannel
        let runtime: Runtime
        let shard: LoopShard

        init(configure: (inout TidegateConfig) -> Void = { _ in }) throws {
            var config = TidegateConfig()
            config.users = ["tidegate": .init(name: "tidegate", password: "secret", backendPassword: nil, admin: true)]
            config.primary = .init(host: "127.0.0.1", port: 1)
            config.threads = 1
            configure(&config)
            let loop = EmbeddedEventLoop()
            let logger = Logger(label: "test")
            self.runtime = Runtime(config: config, configPath: nil, overrides: [:], logger: logger)
            self.shard = LoopShard(loop: loop, runtime: self.runtime, logger: logger)
            self.channel = EmbeddedChannel(loop: loop)
            let session = ClientSession(
                runtime: self.runtime, shard: self.shard, sslContext: nil, remoteAddress: "test", logger: logger)
            try self.channel.pipeline.syncOperations.addHandler(session)
            try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 5432)).wait()
        }

        func send(_ bytes: [UInt8]) throws {
            try self.channel.writeInbound(ByteBuffer(bytes: bytes))
        }

        func send(_ write: (inout ByteBuffer) -> Void) throws {
            var buffer = ByteBuffer()
            write(&buffer)
            try self.channel.writeInbound(buffer)
        }

        /// Everything the session wrote, concatenated.
        func output() throws -> ByteBuffer {
            var all = ByteBuffer()
            while var part = try self.channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&part) }
            return all
        }

        /// The typed messages in `output()`.
        func messages() throws -> [PostgresFrame] {
            var buffer = try self.output()
            var decoder = PostgresFrameDecoder(maxMessageBytes: 1 << 20)
            var frames: [PostgresFrame] = []
            while let frame = try decoder.decode(buffer: &buffer) { frames.append(frame) }
            return frames
        }

        func startup(user: String = "tidegate", database: String = "market") throws {
            try self.send { FrontendEncoder.startup(&$0, parameters: [("user", user), ("database", database)]) }
        }
    }

    static func error(in frames: [PostgresFrame]) throws -> ErrorFields {
        let frame = try #require(frames.first { $0.backendID == .errorResponse })
        return try BackendMessage.errorFields(frame)
    }

    @Test func sslRequestWithoutTLSIsAnsweredN() throws {
        let harness = try Harness()
        try harness.send([0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F])
        #expect(Array(try harness.output().readableBytesView) == [UInt8(ascii: "N")])
        // The client may go on in plaintext.
        try harness.startup()
        let frames = try harness.messages()
        #expect(frames.first?.backendID == .authentication)
    }

    @Test func secondSSLRequestIsRefused() throws {
        let harness = try Harness()
        try harness.send([0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F])
        _ = try harness.output()
        try harness.send([0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F])
        let fields = try Self.error(in: try harness.messages())
        #expect(fields.sqlState == "0A000")
        #expect(fields.severity == "FATAL")
    }

    @Test(arguments: [[UInt8]([0, 0, 0, 3]), [0x7F, 0xFF, 0xFF, 0xFF, 0, 3, 0, 0], [0x80, 0, 0, 0]])
    func badStartupLengthsGet08P01(_ bytes: [UInt8]) throws {
        let harness = try Harness()
        try harness.send(bytes)
        let fields = try Self.error(in: try harness.messages())
        #expect(fields.sqlState == "08P01")
        #expect(fields.severity == "FATAL")
    }

    @Test func scramLoginWithWrongPasswordGets28P01() throws {
        let harness = try Harness()
        try harness.startup()
        var frames = try harness.messages()
        guard case .sasl(let mechanisms) = try BackendMessage.authentication(try #require(frames.first)) else {
            Issue.record("expected AuthenticationSASL")
            return
        }
        #expect(mechanisms == ["SCRAM-SHA-256"])
        var client = SCRAMClientExchange(password: "wrong")
        let first = client.clientFirstMessage()
        try harness.send { FrontendEncoder.saslInitialResponse(&$0, mechanism: "SCRAM-SHA-256", data: first) }
        frames = try harness.messages()
        guard case .saslContinue(let data) = try BackendMessage.authentication(try #require(frames.first)) else {
            Issue.record("expected AuthenticationSASLContinue")
            return
        }
        let final = try client.receiveServerFirst(data)
        try harness.send { FrontendEncoder.saslResponse(&$0, data: final) }
        let fields = try Self.error(in: try harness.messages())
        #expect(fields.sqlState == "28P01")
        #expect(fields.message == "password authentication failed for user \"tidegate\"")
    }

    @Test func clientsBeyondTheLimitGet53300() throws {
        let first = try Harness { $0.listen.maxClientConnections = 1 }
        // A second session on the same runtime is one client too many.
        let logger = Logger(label: "test")
        let channel = EmbeddedChannel(loop: first.channel.embeddedEventLoop)
        try channel.pipeline.syncOperations.addHandler(
            ClientSession(runtime: first.runtime, shard: first.shard, sslContext: nil, remoteAddress: "t", logger: logger))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 5432)).wait()
        var buffer = ByteBuffer()
        while var part = try channel.readOutbound(as: ByteBuffer.self) { buffer.writeBuffer(&part) }
        var decoder = PostgresFrameDecoder(maxMessageBytes: 1 << 20)
        let frame = try #require(try decoder.decode(buffer: &buffer))
        let fields = try BackendMessage.errorFields(frame)
        #expect(fields.sqlState == "53300")
    }

    @Test func passwordMessageBeforeStartupIsAProtocolViolation() throws {
        let harness = try Harness()
        // A typed message where a startup packet belongs: its length field reads as a huge packet.
        try harness.send { FrontendEncoder.password(&$0, "secret") }
        let fields = try Self.error(in: try harness.messages())
        #expect(fields.sqlState == "08P01")
    }
}
