import NIOCore

/// Parsed views of the client messages that Tidegate needs to look inside. Everything else is
/// forwarded as raw frames.
public enum FrontendMessage {
    public struct Parse: Sendable, Equatable {
        public var statementName: String
        /// The query text as sent: in the client's encoding, which need not be UTF-8.
        public var queryBytes: ByteBuffer
        public var parameterTypes: [UInt32]

        /// The query text decoded as UTF-8 (invalid bytes replaced), for analysis only; forward
        /// `queryBytes`.
        public var query: String { String(buffer: self.queryBytes) }

        public init(statementName: String, queryBytes: ByteBuffer, parameterTypes: [UInt32]) {
            self.statementName = statementName
            self.queryBytes = queryBytes
            self.parameterTypes = parameterTypes
        }

        public init(statementName: String, query: String, parameterTypes: [UInt32]) {
            self.init(statementName: statementName, queryBytes: ByteBuffer(string: query), parameterTypes: parameterTypes)
        }
    }

    public struct Bind: Sendable, Equatable {
        public var portalName: String
        public var statementName: String
        /// Offset (from the start of the body) of the bytes after the statement name.
        public var restOffset: Int
    }

    /// The rest of a Bind: parameter formats and values, result formats.
    public struct BindValues: Sendable, Equatable {
        /// As sent: none (all text), one (for all), or one per parameter.
        public var parameterFormats: [Int16]
        /// nil is SQL NULL.
        public var parameters: [ByteBuffer?]
        public var resultFormats: [Int16]

        /// Whether parameter `index` (0-based) is in binary format.
        public func isBinary(_ index: Int) -> Bool {
            switch self.parameterFormats.count {
            case 0: return false
            case 1: return self.parameterFormats[0] == 1
            default: return index < self.parameterFormats.count && self.parameterFormats[index] == 1
            }
        }
    }

    public struct Describe: Sendable, Equatable {
        public var kind: UInt8  // 'S' statement or 'P' portal
        public var name: String
    }

    public typealias Close = Describe

    public struct Execute: Sendable, Equatable {
        public var portalName: String
        public var maxRows: Int32
    }

    public static func parse(_ frame: PostgresFrame) throws(WireError) -> Parse {
        var body = frame.body
        guard let name = body.readNullTerminatedString(), let query = body.readNullTerminatedBytes(),
            let count = body.readInteger(as: UInt16.self), body.readableBytes == Int(count) * 4
        else { throw WireError.malformedMessage("Parse") }
        var types: [UInt32] = []
        types.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let oid = body.readInteger(as: UInt32.self) else { throw WireError.malformedMessage("Parse") }
            types.append(oid)
        }
        return Parse(statementName: name, queryBytes: query, parameterTypes: types)
    }

    public static func bind(_ frame: PostgresFrame) throws(WireError) -> Bind {
        var body = frame.body
        let start = body.readerIndex
        guard let portal = body.readNullTerminatedString(), let statement = body.readNullTerminatedString() else {
            throw WireError.malformedMessage("Bind")
        }
        return Bind(portalName: portal, statementName: statement, restOffset: body.readerIndex - start)
    }

    /// Decodes what follows the names of a Bind; every count and length is checked against the body.
    public static func bindValues(_ frame: PostgresFrame, _ bind: Bind) throws(WireError) -> BindValues {
        var body = frame.body
        body.moveReaderIndex(forwardBy: bind.restOffset)
        func codes() throws(WireError) -> [Int16] {
            guard let count = body.readInteger(as: UInt16.self), body.readableBytes >= Int(count) * 2 else {
                throw WireError.malformedMessage("Bind")
            }
            return (0..<count).map { _ in body.readInteger(as: Int16.self)! }
        }
        let formats = try codes()
        guard let count = body.readInteger(as: UInt16.self) else { throw WireError.malformedMessage("Bind") }
        guard formats.count <= 1 || formats.count == Int(count) else { throw WireError.malformedMessage("Bind") }
        var parameters: [ByteBuffer?] = []
        parameters.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let length = body.readInteger(as: Int32.self), length >= -1 else { throw WireError.malformedMessage("Bind") }
            if length == -1 {
                parameters.append(nil)
            } else {
                guard let value = body.readSlice(length: Int(length)) else { throw WireError.malformedMessage("Bind") }
                parameters.append(value)
            }
        }
        let results = try codes()
        guard body.readableBytes == 0 else { throw WireError.malformedMessage("Bind") }
        return BindValues(parameterFormats: formats, parameters: parameters, resultFormats: results)
    }

    public static func describe(_ frame: PostgresFrame) throws(WireError) -> Describe {
        var body = frame.body
        guard let kind = body.readInteger(as: UInt8.self), kind == UInt8(ascii: "S") || kind == UInt8(ascii: "P"),
            let name = body.readNullTerminatedString(), body.readableBytes == 0
        else { throw WireError.malformedMessage(frame.id == FrontendMessageID.close.rawValue ? "Close" : "Describe") }
        return Describe(kind: kind, name: name)
    }

    public static func execute(_ frame: PostgresFrame) throws(WireError) -> Execute {
        var body = frame.body
        guard let portal = body.readNullTerminatedString(), let rows = body.readInteger(as: Int32.self),
            body.readableBytes == 0
        else { throw WireError.malformedMessage("Execute") }
        return Execute(portalName: portal, maxRows: rows)
    }

    public static func query(_ frame: PostgresFrame) throws(WireError) -> String {
        var body = frame.body
        guard let query = body.readNullTerminatedString(), body.readableBytes == 0 else {
            throw WireError.malformedMessage("Query")
        }
        return query
    }

    /// Re-encodes a Bind with another statement name; the rest of the body is copied unchanged.
    public static func rewriteBind(_ frame: PostgresFrame, _ bind: Bind, statementName: String) -> PostgresFrame {
        let body = frame.body
        var out = ByteBuffer()
        out.reserveCapacity(frame.raw.readableBytes + statementName.utf8.count)
        // The portal name is copied as sent (it may not be UTF-8).
        let portalLength = body.readableBytesView.firstIndex(of: 0).map { $0 - body.readerIndex } ?? 0
        out.writePostgresMessage(id: FrontendMessageID.bind.rawValue) { buffer in
            if var portal = body.getSlice(at: body.readerIndex, length: portalLength) { buffer.writeBuffer(&portal) }
            buffer.writeInteger(UInt8(0))
            buffer.writeCString(statementName)
            if var rest = body.getSlice(at: body.readerIndex + bind.restOffset, length: body.readableBytes - bind.restOffset) {
                buffer.writeBuffer(&rest)
            }
        }
        return PostgresFrame(id: FrontendMessageID.bind.rawValue, raw: out)
    }
}

/// Encoders for the messages Tidegate itself sends to a server.
public enum FrontendEncoder {
    public static func startup(_ buffer: inout ByteBuffer, parameters: [(String, String)]) {
        let start = buffer.writerIndex
        buffer.writeInteger(Int32(0))
        buffer.writeInteger(Int32(196_608))
        for (key, value) in parameters {
            buffer.writeCString(key)
            buffer.writeCString(value)
        }
        buffer.writeInteger(UInt8(0))
        buffer.setInteger(Int32(buffer.writerIndex - start), at: start)
    }

    public static func cancelRequest(_ buffer: inout ByteBuffer, processID: Int32, secretKey: Int32) {
        buffer.writeInteger(Int32(16))
        buffer.writeInteger(StartupPacket.cancelRequestCode)
        buffer.writeInteger(processID)
        buffer.writeInteger(secretKey)
    }

    public static func password(_ buffer: inout ByteBuffer, _ password: String) {
        buffer.writePostgresMessage(id: FrontendMessageID.password.rawValue) { $0.writeCString(password) }
    }

    public static func saslInitialResponse(_ buffer: inout ByteBuffer, mechanism: String, data: [UInt8]) {
        buffer.writePostgresMessage(id: FrontendMessageID.password.rawValue) {
            $0.writeCString(mechanism)
            $0.writeInteger(Int32(data.count))
            $0.writeBytes(data)
        }
    }

    public static func saslResponse(_ buffer: inout ByteBuffer, data: [UInt8]) {
        buffer.writePostgresMessage(id: FrontendMessageID.password.rawValue) { $0.writeBytes(data) }
    }

    public static func query(_ buffer: inout ByteBuffer, _ sql: String) {
        buffer.writePostgresMessage(id: FrontendMessageID.query.rawValue) { $0.writeCString(sql) }
    }

    public static func parse(_ buffer: inout ByteBuffer, name: String, query: String, parameterTypes: [UInt32]) {
        self.parse(&buffer, name: name, queryBytes: ByteBuffer(string: query), parameterTypes: parameterTypes)
    }

    public static func parse(_ buffer: inout ByteBuffer, name: String, queryBytes: ByteBuffer, parameterTypes: [UInt32]) {
        buffer.writePostgresMessage(id: FrontendMessageID.parse.rawValue) {
            $0.writeCString(name)
            $0.writeImmutableBuffer(queryBytes)
            $0.writeInteger(UInt8(0))
            $0.writeInteger(UInt16(truncatingIfNeeded: parameterTypes.count))
            for oid in parameterTypes { $0.writeInteger(oid) }
        }
    }

    public static func describe(_ buffer: inout ByteBuffer, kind: UInt8, name: String) {
        buffer.writePostgresMessage(id: FrontendMessageID.describe.rawValue) {
            $0.writeInteger(kind)
            $0.writeCString(name)
        }
    }

    public static func close(_ buffer: inout ByteBuffer, kind: UInt8, name: String) {
        buffer.writePostgresMessage(id: FrontendMessageID.close.rawValue) {
            $0.writeInteger(kind)
            $0.writeCString(name)
        }
    }

    public static func bind(
        _ buffer: inout ByteBuffer, portal: String, statement: String, parameterFormats: [Int16], values: [ByteBuffer?],
        resultFormats: [Int16]
    ) {
        buffer.writePostgresMessage(id: FrontendMessageID.bind.rawValue) {
            $0.writeCString(portal)
            $0.writeCString(statement)
            $0.writeInteger(Int16(truncatingIfNeeded: parameterFormats.count))
            for format in parameterFormats { $0.writeInteger(format) }
            $0.writeInteger(Int16(truncatingIfNeeded: values.count))
            for value in values {
                if let value {
                    $0.writeInteger(Int32(value.readableBytes))
                    $0.writeImmutableBuffer(value)
                } else {
                    $0.writeInteger(Int32(-1))
                }
            }
            $0.writeInteger(Int16(truncatingIfNeeded: resultFormats.count))
            for format in resultFormats { $0.writeInteger(format) }
        }
    }

    public static func execute(_ buffer: inout ByteBuffer, portal: String, maxRows: Int32 = 0) {
        buffer.writePostgresMessage(id: FrontendMessageID.execute.rawValue) {
            $0.writeCString(portal)
            $0.writeInteger(maxRows)
        }
    }

    public static func sync(_ buffer: inout ByteBuffer) {
        buffer.writePostgresMessage(id: FrontendMessageID.sync.rawValue) { _ in }
    }

    public static func terminate(_ buffer: inout ByteBuffer) {
        buffer.writePostgresMessage(id: FrontendMessageID.terminate.rawValue) { _ in }
    }
}
