import NIOCore
import Testing

@testable import PostgresWire

/// Decodes exactly one frame from `buffer` (which must hold exactly one).
func singleFrame(_ buffer: ByteBuffer) throws -> PostgresFrame {
    var decoder = PostgresFrameDecoder(maxMessageBytes: 1 << 20)
    var input = buffer
    let decoded = try decoder.decode(buffer: &input)
    let frame = try #require(decoded)
    #expect(input.readableBytes == 0, "more than one frame")
    return frame
}

func encoded(_ write: (inout ByteBuffer) -> Void) -> ByteBuffer {
    var buffer = ByteBuffer()
    write(&buffer)
    return buffer
}

func bytes(_ buffer: ByteBuffer) -> [UInt8] { Array(buffer.readableBytesView) }

func ascii(_ string: String) -> [UInt8] { Array(string.utf8) }

@Suite struct FrontendMessageTests {
    @Test func parseRoundTrip() throws {
        let frame = try singleFrame(
            encoded {
                FrontendEncoder.parse(&$0, name: "stmt_1", query: "SELECT $1::int8, $2", parameterTypes: [20, 0])
            }
        )
        #expect(frame.frontendID == .parse)
        let parse = try FrontendMessage.parse(frame)
        #expect(parse.statementName == "stmt_1")
        #expect(parse.query == "SELECT $1::int8, $2")
        #expect(parse.parameterTypes == [20, 0])
    }

    @Test func parseUnnamedWithoutTypes() throws {
        let frame = try singleFrame(
            encoded { FrontendEncoder.parse(&$0, name: "", query: "SELECT 'ü'", parameterTypes: []) }
        )
        #expect(try FrontendMessage.parse(frame) == .init(statementName: "", query: "SELECT 'ü'", parameterTypes: []))
    }

    @Test func parseHandWrittenBytes() throws {
        // P, length 21, "s\0", "SELECT 1\0", 1 type: 23 (int4)
        let raw: [UInt8] = [0x50, 0, 0, 0, 21, 0x73, 0] + ascii("SELECT 1") + [0, 0, 1, 0, 0, 0, 23]
        let frame = try singleFrame(ByteBuffer(bytes: raw))
        #expect(try FrontendMessage.parse(frame) == .init(statementName: "s", query: "SELECT 1", parameterTypes: [23]))
        #expect(
            bytes(encoded { FrontendEncoder.parse(&$0, name: "s", query: "SELECT 1", parameterTypes: [23]) }) == raw
        )
    }

    @Test func malformedParseIsRejected() {
        let wrongCount = PostgresFrame(id: 0x50, body: ByteBuffer(bytes: ascii("s\0q\0") + [0, 2, 0, 0, 0, 23]))
        #expect(throws: WireError.malformedMessage("Parse")) { try FrontendMessage.parse(wrongCount) }
        let unterminated = PostgresFrame(id: 0x50, body: ByteBuffer(bytes: ascii("s\0SELECT")))
        #expect(throws: WireError.malformedMessage("Parse")) { try FrontendMessage.parse(unterminated) }
        let trailing = PostgresFrame(id: 0x50, body: ByteBuffer(bytes: ascii("s\0q\0") + [0, 0, 9]))
        #expect(throws: WireError.malformedMessage("Parse")) { try FrontendMessage.parse(trailing) }
    }

    /// A Bind with portal "p1", statement "s1", one binary format code, two parameters (an int4 and a
    /// NULL) and one result format code.
    static let bindRest: [UInt8] = [0, 1, 0, 1, 0, 2, 0, 0, 0, 4, 0, 0, 0x30, 0x39, 0xFF, 0xFF, 0xFF, 0xFF, 0, 1, 0, 1]
    static func bindFrame(portal: String = "p1", statement: String = "s1") -> PostgresFrame {
        PostgresFrame(id: 0x42, body: ByteBuffer(bytes: ascii(portal) + [0] + ascii(statement) + [0] + Self.bindRest))
    }

    @Test func bindNamesAndRestOffset() throws {
        let bind = try FrontendMessage.bind(Self.bindFrame())
        #expect(bind == .init(portalName: "p1", statementName: "s1", restOffset: 6))
        let unnamed = try FrontendMessage.bind(Self.bindFrame(portal: "", statement: ""))
        #expect(unnamed == .init(portalName: "", statementName: "", restOffset: 2))
    }

    @Test func malformedBindIsRejected() {
        let frame = PostgresFrame(id: 0x42, body: ByteBuffer(bytes: ascii("p1\0s1")))
        #expect(throws: WireError.malformedMessage("Bind")) { try FrontendMessage.bind(frame) }
    }

    @Test(arguments: ["tidegate_0123456789abcdef", "", "x"])
    func rewriteBindKeepsTheRestByteForByte(newName: String) throws {
        let original = Self.bindFrame()
        let bind = try FrontendMessage.bind(original)
        let rewritten = FrontendMessage.rewriteBind(original, bind, statementName: newName)
        // The result is one well-formed frame with a correct length.
        let decoded = try singleFrame(rewritten.raw)
        #expect(decoded == rewritten)
        #expect(rewritten.frontendID == .bind)
        let expectedBody = ascii("p1") + [0] + ascii(newName) + [0] + Self.bindRest
        #expect(bytes(rewritten.body) == expectedBody)
        #expect(rewritten.raw.readableBytes == expectedBody.count + 5)
        let again = try FrontendMessage.bind(rewritten)
        #expect(again.portalName == "p1")
        #expect(again.statementName == newName)
        #expect(bytes(rewritten.body.getSlice(at: again.restOffset, length: Self.bindRest.count)!) == Self.bindRest)
    }

    @Test func rewriteBindOfASliceInsideALargerBuffer() throws {
        // Frames are slices of the receive buffer, decoded after other frames.
        var stream = encoded { FrontendEncoder.sync(&$0) }
        var bindBytes = Self.bindFrame(portal: "", statement: "client_stmt").raw
        stream.writeBuffer(&bindBytes)
        var decoder = PostgresFrameDecoder(maxMessageBytes: 1 << 20)
        _ = try decoder.decode(buffer: &stream)
        let decoded = try decoder.decode(buffer: &stream)
        let frame = try #require(decoded)
        #expect(frame.frontendID == .bind)
        let rewritten = FrontendMessage.rewriteBind(frame, try FrontendMessage.bind(frame), statementName: "srv_1")
        #expect(bytes(rewritten.body) == ascii("\0srv_1\0") + Self.bindRest)
    }

    @Test func describeAndCloseRoundTrip() throws {
        let describe = try singleFrame(encoded { FrontendEncoder.describe(&$0, kind: UInt8(ascii: "S"), name: "stmt") })
        #expect(describe.frontendID == .describe)
        #expect(try FrontendMessage.describe(describe) == .init(kind: UInt8(ascii: "S"), name: "stmt"))
        let portal = try singleFrame(encoded { FrontendEncoder.describe(&$0, kind: UInt8(ascii: "P"), name: "") })
        #expect(try FrontendMessage.describe(portal) == .init(kind: UInt8(ascii: "P"), name: ""))
        let close = try singleFrame(encoded { FrontendEncoder.close(&$0, kind: UInt8(ascii: "S"), name: "old") })
        #expect(close.frontendID == .close)
        #expect(bytes(close.raw) == [0x43, 0, 0, 0, 9, 0x53] + ascii("old") + [0])
        #expect(try FrontendMessage.describe(close) == .init(kind: UInt8(ascii: "S"), name: "old"))
    }

    @Test func malformedDescribeAndCloseNameTheMessage() {
        let badKind = PostgresFrame(id: 0x44, body: ByteBuffer(bytes: ascii("Xname\0")))
        #expect(throws: WireError.malformedMessage("Describe")) { try FrontendMessage.describe(badKind) }
        let badClose = PostgresFrame(id: 0x43, body: ByteBuffer(bytes: ascii("Sname\0extra")))
        #expect(throws: WireError.malformedMessage("Close")) { try FrontendMessage.describe(badClose) }
    }

    @Test func executeHandWritten() throws {
        let frame = try singleFrame(ByteBuffer(bytes: [0x45, 0, 0, 0, 12] + ascii("cur\0") + [0, 0, 0, 100]))
        #expect(frame.frontendID == .execute)
        #expect(try FrontendMessage.execute(frame) == .init(portalName: "cur", maxRows: 100))
        let unnamedAll = PostgresFrame(id: 0x45, body: ByteBuffer(bytes: [0, 0, 0, 0, 0]))
        #expect(try FrontendMessage.execute(unnamedAll) == .init(portalName: "", maxRows: 0))
        let trailing = PostgresFrame(id: 0x45, body: ByteBuffer(bytes: [0, 0, 0, 0, 0, 1]))
        #expect(throws: WireError.malformedMessage("Execute")) { try FrontendMessage.execute(trailing) }
    }

    @Test func queryRoundTrip() throws {
        let sql = "SELECT 'a;b' AS \"x\"; SELECT $$ü$$"
        let frame = try singleFrame(encoded { FrontendEncoder.query(&$0, sql) })
        #expect(frame.frontendID == .query)
        #expect(try FrontendMessage.query(frame) == sql)
        #expect(bytes(encoded { FrontendEncoder.query(&$0, "") }) == [0x51, 0, 0, 0, 5, 0])
        let trailing = PostgresFrame(id: 0x51, body: ByteBuffer(bytes: ascii("SELECT 1\0\0")))
        #expect(throws: WireError.malformedMessage("Query")) { try FrontendMessage.query(trailing) }
        let unterminated = PostgresFrame(id: 0x51, body: ByteBuffer(bytes: ascii("SELECT 1")))
        #expect(throws: WireError.malformedMessage("Query")) { try FrontendMessage.query(unterminated) }
    }

    @Test func startupAndCancelEncodersDecode() throws {
        var decoder = StartupPacketDecoder()
        var startup = encoded {
            FrontendEncoder.startup(&$0, parameters: [("user", "tidegate"), ("database", "market")])
        }
        #expect(
            try decoder.decode(buffer: &startup)
                == .startup(major: 3, minor: 0, parameters: [("user", "tidegate"), ("database", "market")])
        )
        var cancel = encoded { FrontendEncoder.cancelRequest(&$0, processID: -5, secretKey: 99) }
        #expect(bytes(cancel) == [0, 0, 0, 16, 4, 210, 22, 46, 0xFF, 0xFF, 0xFF, 0xFB, 0, 0, 0, 99])
        #expect(try decoder.decode(buffer: &cancel) == .cancel(processID: -5, secretKey: 99))
    }

    @Test func passwordAndSASLEncoders() {
        #expect(bytes(encoded { FrontendEncoder.password(&$0, "pw") }) == [0x70, 0, 0, 0, 7] + ascii("pw\0"))
        #expect(
            bytes(encoded { FrontendEncoder.saslInitialResponse(&$0, mechanism: "SCRAM-SHA-256", data: [1, 2, 3]) })
                == [0x70, 0, 0, 0, 25] + ascii("SCRAM-SHA-256\0") + [0, 0, 0, 3, 1, 2, 3]
        )
        #expect(bytes(encoded { FrontendEncoder.saslResponse(&$0, data: [9, 8]) }) == [0x70, 0, 0, 0, 6, 9, 8])
        #expect(bytes(encoded { FrontendEncoder.sync(&$0) }) == [0x53, 0, 0, 0, 4])
        #expect(bytes(encoded { FrontendEncoder.terminate(&$0) }) == [0x58, 0, 0, 0, 4])
    }
}

@Suite struct BackendMessageTests {
    @Test func errorResponseBytes() throws {
        let fields = ErrorFields(severity: "ERROR", sqlState: "22012", message: "division by zero")
        let expected: [UInt8] =
            [0x45, 0, 0, 0, 44] + ascii("SERROR\0VERROR\0C22012\0Mdivision by zero\0") + [0]
        let buffer = encoded { BackendEncoder.errorResponse(&$0, fields) }
        #expect(bytes(buffer) == expected)
        let frame = try singleFrame(buffer)
        #expect(frame.backendID == .errorResponse)
        let parsed = try BackendMessage.errorFields(frame)
        #expect(parsed == fields)
        #expect(parsed.sqlState == "22012")
        #expect(parsed.message == "division by zero")
        #expect(parsed.severity == "ERROR")
        #expect(parsed["D"] == nil)
    }

    @Test func errorFieldsWithDetailHintAndNotice() throws {
        let fields = ErrorFields(severity: "FATAL", sqlState: "28P01", message: "m", detail: "d", hint: "h")
        #expect(fields.fields.map(\.code) == ascii("SVCMDH"))
        let notice = try singleFrame(encoded { BackendEncoder.noticeResponse(&$0, fields) })
        #expect(notice.backendID == .noticeResponse)
        let parsed = try BackendMessage.errorFields(notice)
        #expect(parsed["D"] == "d")
        #expect(parsed["H"] == "h")
        // Localized S, unlocalized V: severity prefers V.
        let localized = ErrorFields(fields: [(UInt8(ascii: "S"), "FEHLER"), (UInt8(ascii: "V"), "ERROR")])
        #expect(localized.severity == "ERROR")
        #expect(ErrorFields(fields: [(UInt8(ascii: "S"), "FEHLER")]).severity == "FEHLER")
        #expect(localized != ErrorFields(fields: [(UInt8(ascii: "V"), "ERROR"), (UInt8(ascii: "S"), "FEHLER")]))
    }

    @Test func errorFieldWithoutTerminatedValueIsRejected() {
        let frame = PostgresFrame(id: 0x45, body: ByteBuffer(bytes: ascii("SERROR")))
        #expect(throws: WireError.malformedMessage("ErrorResponse")) { try BackendMessage.errorFields(frame) }
    }

    @Test func rowDescriptionBytes() throws {
        let expected: [UInt8] =
            [0x54, 0, 0, 0, 56, 0, 2]
            + ascii("symbol\0") + [0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]
            + ascii("volume\0") + [0, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0, 8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]
        let buffer = encoded { BackendEncoder.rowDescription(&$0, columns: [("symbol", 25), ("volume", 20)]) }
        #expect(bytes(buffer) == expected)
        #expect(try singleFrame(buffer).backendID == .rowDescription)
    }

    @Test func dataRowWithNullBytes() throws {
        let expected: [UInt8] =
            [0x44, 0, 0, 0, 22, 0, 3, 0, 0, 0, 4] + ascii("AAPL") + [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]
        let buffer = encoded { BackendEncoder.dataRow(&$0, values: ["AAPL", nil, ""]) }
        #expect(bytes(buffer) == expected)
        #expect(try singleFrame(buffer).backendID == .dataRow)
    }

    @Test(arguments: [
        (TransactionStatus.idle, UInt8(ascii: "I")), (.inTransaction, UInt8(ascii: "T")), (.failed, UInt8(ascii: "E")),
    ])
    func readyForQueryBytes(status: TransactionStatus, byte: UInt8) throws {
        let buffer = encoded { BackendEncoder.readyForQuery(&$0, status: status) }
        #expect(bytes(buffer) == [0x5A, 0, 0, 0, 5, byte])
        #expect(try BackendMessage.readyForQuery(try singleFrame(buffer)) == status)
    }

    @Test func invalidReadyForQueryIsRejected() {
        #expect(throws: WireError.malformedMessage("ReadyForQuery")) {
            try BackendMessage.readyForQuery(PostgresFrame(id: 0x5A, body: ByteBuffer(bytes: ascii("X"))))
        }
        #expect(throws: WireError.malformedMessage("ReadyForQuery")) {
            try BackendMessage.readyForQuery(PostgresFrame(id: 0x5A, body: ByteBuffer()))
        }
    }

    @Test func authenticationSASLBytes() throws {
        let expected: [UInt8] = [0x52, 0, 0, 0, 23, 0, 0, 0, 10] + ascii("SCRAM-SHA-256\0") + [0]
        let buffer = encoded { BackendEncoder.authenticationSASL(&$0, mechanisms: ["SCRAM-SHA-256"]) }
        #expect(bytes(buffer) == expected)
        #expect(try BackendMessage.authentication(try singleFrame(buffer)) == .sasl(mechanisms: ["SCRAM-SHA-256"]))
    }

    @Test func authenticationRoundTrips() throws {
        func parse(_ write: (inout ByteBuffer) -> Void) throws -> BackendMessage.Authentication {
            try BackendMessage.authentication(try singleFrame(encoded(write)))
        }
        #expect(try parse { BackendEncoder.authenticationOK(&$0) } == .ok)
        #expect(try parse { BackendEncoder.authenticationCleartext(&$0) } == .cleartextPassword)
        #expect(
            try parse { BackendEncoder.authenticationMD5(&$0, salt: [1, 2, 3, 4]) } == .md5Password(salt: [1, 2, 3, 4])
        )
        #expect(
            try parse { BackendEncoder.authenticationSASL(&$0, mechanisms: ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]) }
                == .sasl(mechanisms: ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
        )
        #expect(
            try parse { BackendEncoder.authenticationSASLContinue(&$0, data: ascii("r=abc,s=xyz,i=4096")) }
                == .saslContinue(data: ascii("r=abc,s=xyz,i=4096"))
        )
        #expect(
            try parse { BackendEncoder.authenticationSASLFinal(&$0, data: ascii("v=sig")) }
                == .saslFinal(data: ascii("v=sig"))
        )
        // GSS (7) is not supported, but parses.
        let gss = PostgresFrame(id: 0x52, body: ByteBuffer(bytes: [0, 0, 0, 7]))
        #expect(try BackendMessage.authentication(gss) == .unsupported(code: 7))
    }

    @Test func malformedAuthenticationIsRejected() {
        #expect(throws: WireError.malformedMessage("Authentication")) {
            try BackendMessage.authentication(PostgresFrame(id: 0x52, body: ByteBuffer(bytes: [0, 0])))
        }
        #expect(throws: WireError.malformedMessage("AuthenticationMD5")) {
            try BackendMessage.authentication(PostgresFrame(id: 0x52, body: ByteBuffer(bytes: [0, 0, 0, 5, 1, 2])))
        }
    }

    @Test func parameterStatusBackendKeyDataAndCommandTag() throws {
        let status = try singleFrame(encoded { BackendEncoder.parameterStatus(&$0, name: "TimeZone", value: "UTC") })
        #expect(bytes(status.raw) == [0x53, 0, 0, 0, 17] + ascii("TimeZone\0UTC\0"))
        let parsed = try BackendMessage.parameterStatus(status)
        #expect(parsed.name == "TimeZone" && parsed.value == "UTC")
        let key = try singleFrame(encoded { BackendEncoder.backendKeyData(&$0, processID: 4242, secretKey: -7) })
        #expect(bytes(key.raw) == [0x4B, 0, 0, 0, 12, 0, 0, 0x10, 0x92, 0xFF, 0xFF, 0xFF, 0xF9])
        let parsedKey = try BackendMessage.backendKeyData(key)
        #expect(parsedKey.processID == 4242 && parsedKey.secretKey == -7)
        let complete = try singleFrame(encoded { BackendEncoder.commandComplete(&$0, tag: "INSERT 0 5") })
        #expect(try BackendMessage.commandTag(complete) == "INSERT 0 5")
        #expect(throws: WireError.malformedMessage("BackendKeyData")) {
            try BackendMessage.backendKeyData(PostgresFrame(id: 0x4B, body: ByteBuffer(bytes: [0, 0, 0, 1])))
        }
        #expect(throws: WireError.malformedMessage("ParameterStatus")) {
            try BackendMessage.parameterStatus(PostgresFrame(id: 0x53, body: ByteBuffer(bytes: ascii("TimeZone\0UTC"))))
        }
    }

    @Test func smallEncoders() {
        #expect(bytes(encoded { BackendEncoder.simple(&$0, .parseComplete) }) == [0x31, 0, 0, 0, 4])
        #expect(bytes(encoded { BackendEncoder.emptyQueryResponse(&$0) }) == [0x49, 0, 0, 0, 4])
        #expect(
            bytes(encoded { BackendEncoder.parameterDescription(&$0, types: [23, 25]) }) == [
                0x74, 0, 0, 0, 14, 0, 2, 0, 0, 0, 23, 0, 0, 0, 25,
            ]
        )
        #expect(
            bytes(encoded { BackendEncoder.negotiateProtocolVersion(&$0, newestVersion: 0, unrecognized: ["_pq_.x"]) })
                == [0x76, 0, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0, 1] + ascii("_pq_.x\0")
        )
    }

    @Test func writePostgresMessageReportsBytesWritten() {
        var buffer = ByteBuffer(bytes: [9, 9])
        let written = buffer.writePostgresMessage(id: 0x51) { $0.writeCString("x") }
        #expect(written == 7)
        #expect(bytes(buffer) == [9, 9, 0x51, 0, 0, 0, 6, 0x78, 0])
        var cstrings = ByteBuffer(bytes: [0x61, 0, 0xFF, 0x62])
        #expect(cstrings.readNullTerminatedBytes().map(bytes) == [0x61])
        #expect(cstrings.readNullTerminatedBytes() == nil)
        #expect(cstrings.readableBytes == 2)
    }
}
