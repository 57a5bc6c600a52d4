/// Byte-level parsing of RFC 5802 SCRAM messages (internal).
///
/// Messages are comma-separated `attr=value` pairs. No value may contain a comma
/// (saslnames escape it as `=2C`, base64 and nonces never contain it), so
/// splitting on commas is exact.
enum SCRAMMessage {
    typealias Bytes = ArraySlice<UInt8>

    static let comma = UInt8(ascii: ",")
    static let equals = UInt8(ascii: "=")

    struct Attribute {
        var name: UInt8
        var value: Bytes
    }

    /// Splits on commas, keeping empty fields.
    static func fields(_ message: Bytes) -> [Bytes] {
        message.split(separator: comma, omittingEmptySubsequences: false)
    }

    /// Parses one `attr=value` field. The attribute name must be a single ASCII letter.
    static func attribute(_ field: Bytes) throws(SCRAMError) -> Attribute {
        guard field.count >= 2 else { throw .malformedMessage("attribute is too short") }
        let name = field[field.startIndex]
        guard isASCIILetter(name) else { throw .malformedMessage("attribute name is not a letter") }
        guard field[field.startIndex + 1] == equals else { throw .malformedMessage("attribute is missing '='") }
        return Attribute(name: name, value: field[(field.startIndex + 2)...])
    }

    /// Parses a field that must be the attribute `name`.
    static func expect(_ name: Character, in field: Bytes?) throws(SCRAMError) -> Bytes {
        guard let field else { throw .malformedMessage("message is truncated: missing '\(name)' attribute") }
        let attr = try attribute(field)
        guard let ascii = name.asciiValue, attr.name == ascii else {
            if attr.name == UInt8(ascii: "m") { throw .unsupportedMandatoryExtension }
            throw .malformedMessage("expected attribute '\(name)'")
        }
        return attr.value
    }

    /// Validates optional extension fields (`attr=value`, any letter except ones
    /// with a defined meaning at that position); their content is ignored.
    static func validateExtensions(_ fields: ArraySlice<Bytes>) throws(SCRAMError) {
        for field in fields {
            let attr = try attribute(field)
            if attr.name == UInt8(ascii: "m") { throw .unsupportedMandatoryExtension }
        }
    }

    static func isASCIILetter(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
    }

    /// RFC 5802 `printable`: %x21-2B / %x2D-7E (printable ASCII except ',').
    static func isValidNonce<C: Collection>(_ nonce: C) -> Bool where C.Element == UInt8 {
        !nonce.isEmpty && nonce.allSatisfy { $0 >= 0x21 && $0 <= 0x7E && $0 != comma }
    }

    /// Decodes a base64 attribute value, throwing a malformed-message error naming the attribute.
    static func base64(_ value: Bytes, attribute: String) throws(SCRAMError) -> [UInt8] {
        guard let decoded = AuthPrimitives.base64Decode(value) else {
            throw .malformedMessage("invalid base64 in '\(attribute)' attribute")
        }
        return decoded
    }

    /// RFC 5802 saslname encoding: ',' -> "=2C", '=' -> "=3D".
    static func escapeSASLName(_ name: String) -> [UInt8] {
        var out = [UInt8]()
        for c in name.utf8 {
            switch c {
            case comma: out.append(contentsOf: Array("=2C".utf8))
            case equals: out.append(contentsOf: Array("=3D".utf8))
            default: out.append(c)
            }
        }
        return out
    }

    /// Constructs a message from parts.
    static func join(_ parts: [[UInt8]]) -> [UInt8] {
        var out = [UInt8]()
        for (i, part) in parts.enumerated() {
            if i > 0 { out.append(comma) }
            out.append(contentsOf: part)
        }
        return out
    }

    static func authMessage(clientFirstBare: [UInt8], serverFirst: [UInt8], clientFinalWithoutProof: [UInt8]) -> [UInt8] {
        join([clientFirstBare, serverFirst, clientFinalWithoutProof])
    }
}
