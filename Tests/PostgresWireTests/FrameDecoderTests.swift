import NIOCore
import NIOTestUtils
import Testing

@testable import PostgresWire

/// A small deterministic generator (SplitMix64) so the fuzz tests replay the same inputs on every run.
struct FuzzRandom: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { self.state = seed }

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Builders for the byte strings the decoder tests feed.
enum WireBytes {
    static func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

    /// A typed message: id, a length covering itself and `body`, then `body`.
    static func message(_ id: Character, _ body: [UInt8]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(id.asciiValue!)
        buffer.writeInteger(Int32(body.count + 4))
        buffer.writeBytes(body)
        return buffer
    }

    /// A header with an arbitrary (possibly lying) length and no body.
    static func header(_ id: UInt8, length: Int32) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(id)
        buffer.writeInteger(length)
        return buffer
    }

    /// A startup-phase packet: a length covering itself, the code, then `body`.
    static func startup(code: Int32, _ body: [UInt8] = [], length: Int32? = nil) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(length ?? Int32(8 + body.count))
        buffer.writeInteger(code)
        buffer.writeBytes(body)
        return buffer
    }

    static func cString(_ string: String) -> [UInt8] { Array(string.utf8) + [0] }

    static func startupBody(_ parameters: [(String, String)]) -> [UInt8] {
        parameters.flatMap { cString($0.0) + cString($0.1) } + [0]
    }
}

@Suite struct PostgresFrameDecoderTests {
    static let limit = 1 << 20

    func decodeAll(_ input: ByteBuffer, limit: Int = Self.limit) throws -> ([PostgresFrame], ByteBuffer) {
        var decoder = PostgresFrameDecoder(maxMessageBytes: limit)
        var buffer = input
        var frames: [PostgresFrame] = []
        while let frame = try decoder.decode(buffer: &buffer) { frames.append(frame) }
        return (frames, buffer)
    }

    @Test func verifierByteByByteAndBulk() throws {
        let sync = WireBytes.message("S", [])
        let query = WireBytes.message("Q", WireBytes.cString("SELECT 1; SELECT 'x'"))
        let dataRow = WireBytes.message("D", [0, 2, 0, 0, 0, 1, 0x31, 0xFF, 0xFF, 0xFF, 0xFF])
        var big = [UInt8](repeating: 0xAB, count: 5_000)
        big[0] = 0
        let copyData = WireBytes.message("d", big)
        // Two frames in one input: the verifier must see both, in order.
        var pair = WireBytes.message("1", [])
        var bindComplete = WireBytes.message("2", [])
        pair.writeBuffer(&bindComplete)
        let pairs: [(ByteBuffer, [PostgresFrame])] = [
            (sync, [PostgresFrame(id: UInt8(ascii: "S"), raw: sync)]),
            (query, [PostgresFrame(id: UInt8(ascii: "Q"), raw: query)]),
            (dataRow, [PostgresFrame(id: UInt8(ascii: "D"), raw: dataRow)]),
            (copyData, [PostgresFrame(id: UInt8(ascii: "d"), raw: copyData)]),
            (
                pair,
                [
                    PostgresFrame(id: UInt8(ascii: "1"), raw: WireBytes.message("1", [])),
                    PostgresFrame(id: UInt8(ascii: "2"), raw: WireBytes.message("2", [])),
                ]
            ),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) {
            PostgresFrameDecoder(maxMessageBytes: Self.limit)
        }
    }

    @Test func frameExposesIDsAndBody() throws {
        let (frames, rest) = try self.decodeAll(WireBytes.message("Z", [UInt8(ascii: "I")]))
        let frame = try #require(frames.first)
        #expect(frames.count == 1)
        #expect(rest.readableBytes == 0)
        #expect(frame.backendID == .readyForQuery)
        #expect(frame.frontendID == nil)
        #expect(Array(frame.body.readableBytesView) == [UInt8(ascii: "I")])
        #expect(frame.raw.readableBytes == 6)
    }

    @Test func initWithBodyWritesHeader() {
        let frame = PostgresFrame(id: UInt8(ascii: "Q"), body: ByteBuffer(bytes: WireBytes.cString("x")))
        #expect(Array(frame.raw.readableBytesView) == [0x51, 0, 0, 0, 6, 0x78, 0])
        #expect(frame.frontendID == .query)
    }

    @Test func incompleteInputWaitsWithoutConsuming() throws {
        let full = WireBytes.message("Q", WireBytes.cString("SELECT 1"))
        for cut in 0..<full.readableBytes {
            let (frames, rest) = try self.decodeAll(full.getSlice(at: 0, length: cut)!)
            #expect(frames.isEmpty)
            #expect(rest.readableBytes == cut)
        }
    }

    @Test func leavesTrailingPartialFrameInBuffer() throws {
        var input = WireBytes.message("S", [])
        input.writeBytes([UInt8(ascii: "Q"), 0, 0])
        let (frames, rest) = try self.decodeAll(input)
        #expect(frames.map(\.id) == [UInt8(ascii: "S")])
        #expect(Array(rest.readableBytesView) == [UInt8(ascii: "Q"), 0, 0])
    }

    @Test(arguments: [Int32(0), 1, 3, -1, -4, Int32.min])
    func lengthBelowFourIsInvalid(length: Int32) {
        #expect(throws: WireError.invalidLength(Int(length))) {
            _ = try self.decodeAll(WireBytes.header(UInt8(ascii: "Q"), length: length))
        }
    }

    @Test(arguments: [Int32(1_048_577), 1 << 24, Int32.max])
    func lengthAboveLimitIsTooLarge(length: Int32) {
        #expect(throws: WireError.messageTooLarge(Int(length), limit: Self.limit)) {
            _ = try self.decodeAll(WireBytes.header(UInt8(ascii: "d"), length: length))
        }
    }

    @Test func lengthAtLimitIsAccepted() throws {
        let body = [UInt8](repeating: 7, count: 1020)
        let (frames, _) = try self.decodeAll(WireBytes.message("d", body), limit: 1024)
        #expect(frames.count == 1)
        #expect(frames.first?.body.readableBytes == 1020)
        #expect(throws: WireError.messageTooLarge(1025, limit: 1024)) {
            _ = try self.decodeAll(WireBytes.message("d", body + [0]), limit: 1024)
        }
    }

    @Test func badLengthIsRejectedBeforeTheBodyArrives() {
        // Only the header of a 2^31-1 byte message: rejected at once, not buffered.
        #expect(throws: WireError.self) {
            _ = try self.decodeAll(WireBytes.header(0, length: Int32.max), limit: Int(Int32.max) - 1)
        }
    }

    @Test func badLengthThroughTheProcessor() throws {
        // NIOSingleStepByteToMessageProcessor is what handlers use to drive the decoder.
        let processor = NIOSingleStepByteToMessageProcessor(PostgresFrameDecoder(maxMessageBytes: Self.limit))
        var received: [PostgresFrame] = []
        var input = WireBytes.message("S", [])
        var bad = WireBytes.header(UInt8(ascii: "Q"), length: 3)
        input.writeBuffer(&bad)
        #expect(throws: WireError.invalidLength(3)) {
            try processor.process(buffer: input) { received.append($0) }
        }
        #expect(received.map(\.id) == [UInt8(ascii: "S")])
    }

    @Test func decodeLastDrainsCompleteFrames() throws {
        var decoder = PostgresFrameDecoder(maxMessageBytes: Self.limit)
        var buffer = WireBytes.message("X", [])
        let frame = try decoder.decodeLast(buffer: &buffer, seenEOF: true)
        #expect(frame?.frontendID == .terminate)
        #expect(try decoder.decodeLast(buffer: &buffer, seenEOF: true) == nil)
    }
}

@Suite struct StartupPacketDecoderTests {
    func decode(_ input: ByteBuffer) throws -> StartupPacket? {
        var decoder = StartupPacketDecoder()
        var buffer = input
        let packet = try decoder.decode(buffer: &buffer)
        if packet != nil { #expect(buffer.readableBytes == 0) }
        return packet
    }

    static let version3: Int32 = 196_608

    @Test func verifierByteByByteAndBulk() throws {
        let parameters = [("user", "alice"), ("database", "market"), ("application_name", "ünïcode")]
        let startup = WireBytes.startup(code: Self.version3, WireBytes.startupBody(parameters))
        let cancel = WireBytes.startup(
            code: StartupPacket.cancelRequestCode,
            [0, 0, 0x30, 0x39, 0xFF, 0xFF, 0xFF, 0xFE]
        )
        let pairs: [(ByteBuffer, [StartupPacket])] = [
            (WireBytes.startup(code: StartupPacket.sslRequestCode), [.sslRequest]),
            (WireBytes.startup(code: StartupPacket.gssEncRequestCode), [.gssEncRequest]),
            (cancel, [.cancel(processID: 12345, secretKey: -2)]),
            (startup, [.startup(major: 3, minor: 0, parameters: parameters)]),
            (WireBytes.startup(code: Self.version3, [0]), [.startup(major: 3, minor: 0, parameters: [])]),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { StartupPacketDecoder() }
    }

    @Test func sslRequest() throws {
        #expect(try self.decode(WireBytes.startup(code: 80_877_103)) == .sslRequest)
    }

    @Test func gssEncRequest() throws {
        #expect(try self.decode(WireBytes.startup(code: 80_877_104)) == .gssEncRequest)
    }

    @Test func cancelRequest() throws {
        let packet = WireBytes.startup(code: 80_877_102, [0, 0, 1, 0, 0x7F, 0xFF, 0xFF, 0xFF])
        #expect(try self.decode(packet) == .cancel(processID: 256, secretKey: Int32.max))
    }

    @Test func startupMessageKeepsParameterOrder() throws {
        let parameters = [("user", "bob"), ("database", "market"), ("options", "-c search_path=a\\ b"), ("empty", "")]
        let packet = try self.decode(WireBytes.startup(code: Self.version3, WireBytes.startupBody(parameters)))
        #expect(packet == .startup(major: 3, minor: 0, parameters: parameters))
        #expect(packet != .startup(major: 3, minor: 0, parameters: parameters.reversed()))
    }

    @Test func minorVersionIsReported() throws {
        let packet = try self.decode(WireBytes.startup(code: 196_610, WireBytes.startupBody([("user", "u")])))
        #expect(packet == .startup(major: 3, minor: 2, parameters: [("user", "u")]))
    }

    @Test func protocolVersion2IsRejected() {
        #expect(throws: WireError.invalidStartupPacket("unsupported frontend protocol 2.0: server supports 3.0")) {
            _ = try self.decode(WireBytes.startup(code: 131_072, WireBytes.startupBody([("user", "u")])))
        }
    }

    @Test func unknownRequestCodeIsRejected() {
        #expect(throws: WireError.self) { _ = try self.decode(WireBytes.startup(code: 80_877_105)) }
    }

    @Test func missingTerminatorIsRejected() {
        // "user\0bob\0" without the final zero byte.
        let body = WireBytes.cString("user") + WireBytes.cString("bob")
        #expect(throws: WireError.invalidStartupPacket("parameter name is not terminated")) {
            _ = try self.decode(WireBytes.startup(code: Self.version3, body))
        }
    }

    @Test func missingValueIsRejected() {
        let body = WireBytes.cString("user") + Array("bob".utf8)
        #expect(throws: WireError.invalidStartupPacket("missing value for parameter \"user\"")) {
            _ = try self.decode(WireBytes.startup(code: Self.version3, body))
        }
    }

    @Test func emptyStartupBodyIsRejected() {
        #expect(throws: WireError.self) { _ = try self.decode(WireBytes.startup(code: Self.version3)) }
    }

    @Test(arguments: [Int32(3), 7, 10_001, 0, -1, Int32.max])
    func lengthOutOfRangeIsRejected(length: Int32) {
        #expect(throws: WireError.invalidStartupPacket("length \(length) is out of range")) {
            _ = try self.decode(WireBytes.startup(code: Self.version3, length: length))
        }
    }

    @Test func lengthIsCheckedFromTheFirstFourBytes() throws {
        var decoder = StartupPacketDecoder()
        var buffer = ByteBuffer(bytes: [0, 0, 0x27, 0x11])  // 10001, nothing else yet
        #expect(throws: WireError.self) { _ = try decoder.decode(buffer: &buffer) }
        var fresh = StartupPacketDecoder()
        var short = ByteBuffer(bytes: [0, 0, 0])
        #expect(try fresh.decode(buffer: &short) == nil)
        #expect(short.readableBytes == 3)
    }

    @Test func maximumLengthIsAccepted() throws {
        let value = String(repeating: "v", count: StartupPacket.maxLength - 8 - 4)  // "x\0" value "\0" "\0"
        let body = WireBytes.startupBody([("x", value)])
        #expect(body.count + 8 == StartupPacket.maxLength)
        let packet = try self.decode(WireBytes.startup(code: Self.version3, body))
        #expect(packet == .startup(major: 3, minor: 0, parameters: [("x", value)]))
    }

    @Test func extraBytesAreRejected() {
        #expect(throws: WireError.invalidStartupPacket("data after the parameter list")) {
            _ = try self.decode(
                WireBytes.startup(code: Self.version3, WireBytes.startupBody([("user", "u")]) + [1, 2])
            )
        }
        #expect(throws: WireError.invalidStartupPacket("SSLRequest has a body")) {
            _ = try self.decode(WireBytes.startup(code: StartupPacket.sslRequestCode, [0]))
        }
        #expect(throws: WireError.invalidStartupPacket("GSSENCRequest has a body")) {
            _ = try self.decode(WireBytes.startup(code: StartupPacket.gssEncRequestCode, [0, 0, 0, 0]))
        }
        #expect(throws: WireError.invalidStartupPacket("CancelRequest must be 16 bytes")) {
            _ = try self.decode(WireBytes.startup(code: StartupPacket.cancelRequestCode, [0, 0, 0, 1, 0, 0, 0, 2, 9]))
        }
        #expect(throws: WireError.invalidStartupPacket("CancelRequest must be 16 bytes")) {
            _ = try self.decode(WireBytes.startup(code: StartupPacket.cancelRequestCode, [0, 0, 0, 1]))
        }
    }

    @Test func partialPacketWaits() throws {
        let full = WireBytes.startup(code: Self.version3, WireBytes.startupBody([("user", "u")]))
        for cut in 0..<full.readableBytes {
            var decoder = StartupPacketDecoder()
            var buffer = full.getSlice(at: 0, length: cut)!
            #expect(try decoder.decode(buffer: &buffer) == nil)
            #expect(buffer.readableBytes == cut)
        }
    }
}

/// Random and mutated input through both decoders: frames or WireError, never a trap or a loop.
@Suite struct DecoderFuzzTests {
    enum Outcome: Equatable {
        case waiting
        case threw
    }

    /// Runs the frame decoder to completion, checking every frame against the bytes it came from.
    static func runFrameDecoder(_ input: ByteBuffer, limit: Int) -> Outcome {
        var decoder = PostgresFrameDecoder(maxMessageBytes: limit)
        var buffer = input
        var steps = 0
        do {
            while true {
                steps += 1
                guard steps <= input.readableBytes + 1 else {
                    Issue.record("frame decoder did not make progress")
                    return .waiting
                }
                let before = buffer.readerIndex
                guard let frame = try decoder.decode(buffer: &buffer) else { break }
                let consumed = buffer.readerIndex - before
                #expect(consumed >= 5)
                #expect(frame.raw.readableBytes == consumed)
                #expect(frame.raw.getInteger(at: frame.raw.readerIndex, as: UInt8.self) == frame.id)
                #expect(frame.raw.getInteger(at: frame.raw.readerIndex + 1, as: Int32.self) == Int32(consumed - 1))
                #expect(frame.body.readableBytes == consumed - 5)
                #expect(consumed - 1 <= limit)
            }
            _ = try decoder.decodeLast(buffer: &buffer, seenEOF: true)
            return .waiting
        } catch is WireError {
            return .threw
        } catch {
            Issue.record("frame decoder threw a non-WireError: \(error)")
            return .threw
        }
    }

    static func runStartupDecoder(_ input: ByteBuffer) -> Outcome {
        var decoder = StartupPacketDecoder()
        var buffer = input
        var steps = 0
        do {
            while true {
                steps += 1
                guard steps <= input.readableBytes + 1 else {
                    Issue.record("startup decoder did not make progress")
                    return .waiting
                }
                let before = buffer.readerIndex
                guard let packet = try decoder.decode(buffer: &buffer) else { break }
                let consumed = buffer.readerIndex - before
                #expect(consumed >= 8 && consumed <= StartupPacket.maxLength)
                switch packet {
                case .sslRequest, .gssEncRequest: #expect(consumed == 8)
                case .cancel: #expect(consumed == 16)
                case .startup(let major, _, _): #expect(major == 3)
                }
            }
            return .waiting
        } catch is WireError {
            return .threw
        } catch {
            Issue.record("startup decoder threw a non-WireError: \(error)")
            return .threw
        }
    }

    /// A valid stream of typed messages in both directions (built with the encoders).
    static func validMessageStream(_ random: inout FuzzRandom) -> [UInt8] {
        var buffer = ByteBuffer()
        for _ in 0..<Int.random(in: 1...8, using: &random) {
            switch Int.random(in: 0..<9, using: &random) {
            case 0: FrontendEncoder.query(&buffer, "SELECT \(random.next() % 1000)")
            case 1:
                FrontendEncoder.parse(&buffer, name: "s\(random.next() % 9)", query: "SELECT $1", parameterTypes: [23])
            case 2: FrontendEncoder.sync(&buffer)
            case 3: BackendEncoder.readyForQuery(&buffer, status: .idle)
            case 4: BackendEncoder.dataRow(&buffer, values: ["1", nil, "three"])
            case 5: BackendEncoder.rowDescription(&buffer, columns: [("a", 25), ("b", 20)])
            case 6:
                BackendEncoder.errorResponse(
                    &buffer,
                    ErrorFields(severity: "ERROR", sqlState: "22012", message: "division by zero")
                )
            case 7: BackendEncoder.authenticationSASL(&buffer, mechanisms: ["SCRAM-SHA-256"])
            default: BackendEncoder.commandComplete(&buffer, tag: "SELECT 1")
            }
        }
        return Array(buffer.readableBytesView)
    }

    static func validStartupPacket(_ random: inout FuzzRandom) -> [UInt8] {
        var buffer = ByteBuffer()
        switch Int.random(in: 0..<4, using: &random) {
        case 0: buffer.writeBytes([0, 0, 0, 8, 4, 210, 22, 47])  // SSLRequest
        case 1: buffer.writeBytes([0, 0, 0, 8, 4, 210, 22, 48])  // GSSENCRequest
        case 2: FrontendEncoder.cancelRequest(&buffer, processID: 42, secretKey: 7)
        default: FrontendEncoder.startup(&buffer, parameters: [("user", "tidegate"), ("database", "market")])
        }
        return Array(buffer.readableBytesView)
    }

    static func mutate(_ bytes: [UInt8], _ random: inout FuzzRandom) -> [UInt8] {
        var bytes = bytes
        for _ in 0..<Int.random(in: 1...4, using: &random) {
            switch Int.random(in: 0..<4, using: &random) {
            case 0 where !bytes.isEmpty:  // bit flip
                let index = Int.random(in: 0..<bytes.count, using: &random)
                bytes[index] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &random)
            case 1 where !bytes.isEmpty:  // truncation
                bytes.removeLast(Int.random(in: 1...bytes.count, using: &random))
            case 2:  // insertion of random bytes
                let index = Int.random(in: 0...bytes.count, using: &random)
                let count = Int.random(in: 1...6, using: &random)
                bytes.insert(contentsOf: (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }, at: index)
            default:  // overwrite a whole length field with a hostile value
                guard bytes.count >= 5 else { continue }
                let index = Int.random(in: 0...(bytes.count - 4), using: &random)
                let hostile: [Int32] = [0, 3, 4, 7, -1, Int32.min, Int32.max, 10_001]
                let value = hostile[Int.random(in: 0..<hostile.count, using: &random)]
                withUnsafeBytes(of: value.bigEndian) { bytes.replaceSubrange(index..<(index + 4), with: $0) }
            }
        }
        return bytes
    }

    @Test(.timeLimit(.minutes(1))) func randomBytes() {
        var random = FuzzRandom(seed: 0x7715_E6A7_E000_0001)
        var outcomes: [Outcome: Int] = [:]
        for _ in 0..<2_000 {
            let count = Int.random(in: 0...64, using: &random)
            let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }
            outcomes[Self.runFrameDecoder(ByteBuffer(bytes: bytes), limit: 1 << 16), default: 0] += 1
            _ = Self.runStartupDecoder(ByteBuffer(bytes: bytes))
        }
        // Random bytes mostly carry nonsense lengths: both outcomes must occur.
        #expect(outcomes[.threw, default: 0] > 100)
        #expect(outcomes[.waiting, default: 0] > 100)
    }

    @Test(.timeLimit(.minutes(1))) func mutatedValidStreams() {
        var random = FuzzRandom(seed: 0xC0FF_EE00_0000_0002)
        var threw = 0
        for _ in 0..<2_000 {
            let stream = Self.validMessageStream(&random)
            // The unmutated stream decodes completely, frame for frame.
            #expect(Self.runFrameDecoder(ByteBuffer(bytes: stream), limit: 1 << 16) == .waiting)
            if Self.runFrameDecoder(ByteBuffer(bytes: Self.mutate(stream, &random)), limit: 1 << 16) == .threw {
                threw += 1
            }
            let packet = Self.validStartupPacket(&random)
            #expect(Self.runStartupDecoder(ByteBuffer(bytes: packet)) == .waiting)
            _ = Self.runStartupDecoder(ByteBuffer(bytes: Self.mutate(packet, &random)))
        }
        #expect(threw > 50)
    }

    @Test func validStreamRoundTripsFrameByFrame() throws {
        var random = FuzzRandom(seed: 3)
        for _ in 0..<200 {
            let stream = Self.validMessageStream(&random)
            var decoder = PostgresFrameDecoder(maxMessageBytes: 1 << 16)
            var buffer = ByteBuffer(bytes: stream)
            var joined: [UInt8] = []
            while let frame = try decoder.decode(buffer: &buffer) { joined += frame.raw.readableBytesView }
            #expect(joined == stream)
        }
    }
}
