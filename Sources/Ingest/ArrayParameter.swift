import NIOCore

/// One array parameter of a batch statement, built from the values of one slot across the batch's rows:
/// PostgreSQL's binary array format when the clients sent the slot's values in binary (their bytes go in
/// unchanged), its text array literal otherwise (every element double-quoted, so no element text can be
/// misread; NULL unquoted).
public struct ArrayParameter {
    public private(set) var buffer: ByteBuffer
    public let binary: Bool
    public private(set) var count = 0
    private var hasNull = false
    private let elementOID: UInt32

    public init(elementOID: UInt32, binary: Bool, capacity: Int = 256) {
        self.elementOID = elementOID
        self.binary = binary
        self.buffer = ByteBuffer()
        self.buffer.reserveCapacity(capacity)
        if binary {
            // ndim, has-null flag, element type, then the one dimension's size and lower bound (set at the end).
            self.buffer.writeInteger(Int32(1))
            self.buffer.writeInteger(Int32(0))
            self.buffer.writeInteger(elementOID)
            self.buffer.writeInteger(Int32(0))
            self.buffer.writeInteger(Int32(1))
        } else {
            self.buffer.writeInteger(UInt8(ascii: "{"))
        }
    }

    /// Appends one element (nil: NULL).
    public mutating func append(_ value: ByteBuffer?) {
        if self.binary {
            if var value {
                self.buffer.writeInteger(Int32(value.readableBytes))
                self.buffer.writeBuffer(&value)
            } else {
                self.buffer.writeInteger(Int32(-1))
                self.hasNull = true
            }
        } else {
            if self.count > 0 { self.buffer.writeInteger(UInt8(ascii: ",")) }
            if let value {
                value.withUnsafeReadableBytes { self.appendQuoted($0) }
            } else {
                self.buffer.writeStaticString("NULL")
            }
        }
        self.count += 1
    }

    /// Appends one element given as text (a constant of the statement's text).
    public mutating func append(text: String?) {
        guard let text else { return self.append(nil) }
        if self.binary {
            self.append(ByteBuffer(string: text))
        } else {
            if self.count > 0 { self.buffer.writeInteger(UInt8(ascii: ",")) }
            var text = text
            text.withUTF8 { self.appendQuoted(UnsafeRawBufferPointer($0)) }
            self.count += 1
        }
    }

    private mutating func appendQuoted(_ bytes: UnsafeRawBufferPointer) {
        self.buffer.writeInteger(UInt8(ascii: "\""))
        // Runs without a quote or backslash go in as one copy.
        var start = 0
        for index in 0..<bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
                self.buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[start..<index]))
                self.buffer.writeInteger(UInt8(ascii: "\\"))
                start = index
            }
        }
        self.buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[start..<bytes.count]))
        self.buffer.writeInteger(UInt8(ascii: "\""))
    }

    /// The finished parameter value.
    public func finished() -> ByteBuffer {
        var out = self.buffer
        if self.binary {
            out.setInteger(Int32(self.hasNull ? 1 : 0), at: out.readerIndex + 4)
            out.setInteger(Int32(self.count), at: out.readerIndex + 12)
        } else {
            out.writeInteger(UInt8(ascii: "}"))
        }
        return out
    }
}
