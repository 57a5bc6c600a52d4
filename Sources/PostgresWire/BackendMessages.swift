import NIOCore

/// Fields of an ErrorResponse or NoticeResponse, in the order sent.
public struct ErrorFields: Sendable, Equatable {
    public var fields: [(code: UInt8, value: String)]

    public init(fields: [(code: UInt8, value: String)]) { self.fields = fields }

    public init(severity: String, sqlState: String, message: String, detail: String? = nil, hint: String? = nil) {
        var fields: [(UInt8, String)] = [
            (UInt8(ascii: "S"), severity), (UInt8(ascii: "V"), severity), (UInt8(ascii: "C"), sqlState),
            (UInt8(ascii: "M"), message),
        ]
        if let detail { fields.append((UInt8(ascii: "D"), detail)) }
        if let hint { fields.append((UInt8(ascii: "H"), hint)) }
        self.fields = fields
    }

    public subscript(code: Character) -> String? {
        guard let ascii = code.asciiValue else { return nil }
        return self.fields.first(where: { $0.code == ascii })?.value
    }

    public var sqlState: String? { self["C"] }

    /// Relabels the error as FATAL (both the localized and the non-localized severity).
    public mutating func makeFatal() {
        for index in self.fields.indices where self.fields[index].code == UInt8(ascii: "S") || self.fields[index].code == UInt8(ascii: "V") {
            self.fields[index].value = "FATAL"
        }
    }
    public var message: String? { self["M"] }
    public var severity: String? { self["V"] ?? self["S"] }

    public static func == (lhs: ErrorFields, rhs: ErrorFields) -> Bool {
        lhs.fields.elementsEqual(rhs.fields, by: { $0.code == $1.code && $0.value == $1.value })
    }
}

/// Parsed views of the server messages Tidegate needs to look inside.
public enum BackendMessage {
    public enum Authentication: Sendable, Equatable {
        case ok
        case cleartextPassword
        case md5Password(salt: [UInt8])
        case sasl(mechanisms: [String])
        case saslContinue(data: [UInt8])
        case saslFinal(data: [UInt8])
        case unsupported(code: Int32)
    }

    public static func authentication(_ frame: PostgresFrame) throws(WireError) -> Authentication {
        var body = frame.body
        guard let code = body.readInteger(as: Int32.self) else { throw WireError.malformedMessage("Authentication") }
        switch code {
        case 0: return .ok
        case 3: return .cleartextPassword
        case 5:
            guard let salt = body.readBytes(length: 4) else { throw WireError.malformedMessage("AuthenticationMD5") }
            return .md5Password(salt: salt)
        case 10:
            var mechanisms: [String] = []
            while let mechanism = body.readNullTerminatedString(), !mechanism.isEmpty { mechanisms.append(mechanism) }
            return .sasl(mechanisms: mechanisms)
        case 11: return .saslContinue(data: body.readBytes(length: body.readableBytes) ?? [])
        case 12: return .saslFinal(data: body.readBytes(length: body.readableBytes) ?? [])
        default: return .unsupported(code: code)
        }
    }

    public static func parameterStatus(_ frame: PostgresFrame) throws(WireError) -> (name: String, value: String) {
        var body = frame.body
        guard let name = body.readNullTerminatedString(), let value = body.readNullTerminatedString() else {
            throw WireError.malformedMessage("ParameterStatus")
        }
        return (name, value)
    }

    public static func backendKeyData(_ frame: PostgresFrame) throws(WireError) -> (processID: Int32, secretKey: Int32) {
        var body = frame.body
        guard let pid = body.readInteger(as: Int32.self), let key = body.readInteger(as: Int32.self) else {
            throw WireError.malformedMessage("BackendKeyData")
        }
        return (pid, key)
    }

    public static func readyForQuery(_ frame: PostgresFrame) throws(WireError) -> TransactionStatus {
        var body = frame.body
        guard let byte = body.readInteger(as: UInt8.self), let status = TransactionStatus(rawValue: byte) else {
            throw WireError.malformedMessage("ReadyForQuery")
        }
        return status
    }

    public static func errorFields(_ frame: PostgresFrame) throws(WireError) -> ErrorFields {
        var body = frame.body
        var fields: [(UInt8, String)] = []
        while let code = body.readInteger(as: UInt8.self), code != 0 {
            guard let value = body.readNullTerminatedString() else { throw WireError.malformedMessage("ErrorResponse") }
            fields.append((code, value))
        }
        return ErrorFields(fields: fields)
    }

    public static func commandTag(_ frame: PostgresFrame) throws(WireError) -> String {
        var body = frame.body
        guard let tag = body.readNullTerminatedString() else { throw WireError.malformedMessage("CommandComplete") }
        return tag
    }
}

/// Encoders for the messages Tidegate itself sends to a client.
public enum BackendEncoder {
    public static func authenticationOK(_ buffer: inout ByteBuffer) {
        buffer.writePostgresMessage(id: BackendMessageID.authentication.rawValue) { $0.writeInteger(Int32(0)) }
    }

    public static func authenticationCleartext(_ buffer: inout ByteBuffer) {
        buffer.writePostgresMessage(id: BackendMessageID.authentication.rawValue) { $0.writeInteger(Int32(3)) }
    }

    public static func authenticationMD5(_ buffer: inout ByteBuffer, salt: [UInt8]) {
        buffer.writePostgresMessage(id: BackendMessageID.authentication.rawValue) {
            $0.writeInteger(Int32(5))
            $0.writeBytes(salt)
        }
    }

    public static func authenticationSASL(_ buffer: inout ByteBuffer, mechanisms: [String]) {
        buffer.writePostgresMessage(id: BackendMessageID.authentication.rawValue) {
            $0.writeInteger(Int32(10))
            for mechanism in mechanisms { $0.writeCString(mechanism) }
            $0.writeInteger(UInt8(0))
        }
    }

    public static func authenticationSASLContinue(_ buffer: inout ByteBuffer, data: [UInt8]) {
        buffer.writePostgresMessage(id: BackendMessageID.authentication.rawValue) {
            $0.writeInteger(Int32(11))
            $0.writeBytes(data)
        }
    }

    public static func authenticationSASLFinal(_ buffer: inout ByteBuffer, data: [UInt8]) {
        buffer.writePostgresMessage(id: BackendMessageID.authentication.rawValue) {
            $0.writeInteger(Int32(12))
            $0.writeBytes(data)
        }
    }

    public static func parameterStatus(_ buffer: inout ByteBuffer, name: String, value: String) {
        buffer.writePostgresMessage(id: BackendMessageID.parameterStatus.rawValue) {
            $0.writeCString(name)
            $0.writeCString(value)
        }
    }

    public static func backendKeyData(_ buffer: inout ByteBuffer, processID: Int32, secretKey: Int32) {
        buffer.writePostgresMessage(id: BackendMessageID.backendKeyData.rawValue) {
            $0.writeInteger(processID)
            $0.writeInteger(secretKey)
        }
    }

    public static func readyForQuery(_ buffer: inout ByteBuffer, status: TransactionStatus) {
        buffer.writePostgresMessage(id: BackendMessageID.readyForQuery.rawValue) { $0.writeInteger(status.rawValue) }
    }

    public static func errorResponse(_ buffer: inout ByteBuffer, _ fields: ErrorFields) {
        self.fields(&buffer, id: BackendMessageID.errorResponse.rawValue, fields)
    }

    public static func noticeResponse(_ buffer: inout ByteBuffer, _ fields: ErrorFields) {
        self.fields(&buffer, id: BackendMessageID.noticeResponse.rawValue, fields)
    }

    private static func fields(_ buffer: inout ByteBuffer, id: UInt8, _ fields: ErrorFields) {
        buffer.writePostgresMessage(id: id) {
            for (code, value) in fields.fields {
                $0.writeInteger(code)
                $0.writeCString(value)
            }
            $0.writeInteger(UInt8(0))
        }
    }

    /// `newestVersion` is the full protocol number (PostgreSQL sends 196608 for 3.0).
    public static func negotiateProtocolVersion(_ buffer: inout ByteBuffer, newestVersion: Int32, unrecognized: [String]) {
        buffer.writePostgresMessage(id: BackendMessageID.negotiateProtocolVersion.rawValue) {
            $0.writeInteger(newestVersion)
            $0.writeInteger(Int32(unrecognized.count))
            for option in unrecognized { $0.writeCString(option) }
        }
    }

    /// RowDescription for text columns of type `text` (OID 25) or `int8` (OID 20), as the admin console uses.
    public static func rowDescription(_ buffer: inout ByteBuffer, columns: [(name: String, typeOID: UInt32)]) {
        buffer.writePostgresMessage(id: BackendMessageID.rowDescription.rawValue) {
            $0.writeInteger(Int16(truncatingIfNeeded: columns.count))
            for column in columns {
                $0.writeCString(column.name)
                $0.writeInteger(UInt32(0))  // table OID
                $0.writeInteger(Int16(0))  // column number
                $0.writeInteger(column.typeOID)
                $0.writeInteger(column.typeOID == 20 ? Int16(8) : Int16(-1))
                $0.writeInteger(Int32(-1))  // typmod
                $0.writeInteger(Int16(0))  // text format
            }
        }
    }

    public static func dataRow(_ buffer: inout ByteBuffer, values: [String?]) {
        buffer.writePostgresMessage(id: BackendMessageID.dataRow.rawValue) {
            $0.writeInteger(Int16(truncatingIfNeeded: values.count))
            for value in values {
                if let value {
                    $0.writeInteger(Int32(value.utf8.count))
                    $0.writeString(value)
                } else {
                    $0.writeInteger(Int32(-1))
                }
            }
        }
    }

    public static func commandComplete(_ buffer: inout ByteBuffer, tag: String) {
        buffer.writePostgresMessage(id: BackendMessageID.commandComplete.rawValue) { $0.writeCString(tag) }
    }

    public static func emptyQueryResponse(_ buffer: inout ByteBuffer) {
        buffer.writePostgresMessage(id: BackendMessageID.emptyQueryResponse.rawValue) { _ in }
    }

    public static func simple(_ buffer: inout ByteBuffer, _ id: BackendMessageID) {
        buffer.writePostgresMessage(id: id.rawValue) { _ in }
    }

    public static func parameterDescription(_ buffer: inout ByteBuffer, types: [UInt32]) {
        buffer.writePostgresMessage(id: BackendMessageID.parameterDescription.rawValue) {
            $0.writeInteger(Int16(truncatingIfNeeded: types.count))
            for oid in types { $0.writeInteger(oid) }
        }
    }
}
