import NIOCore

extension ByteBuffer {
    /// Writes a typed message: type byte, a length placeholder, the body from `body`, then patches the
    /// length. Returns the number of bytes written.
    @discardableResult
    @inlinable
    public mutating func writePostgresMessage(id: UInt8, _ body: (inout ByteBuffer) -> Void) -> Int {
        let start = self.writerIndex
        self.writeInteger(id)
        self.writeInteger(Int32(0))
        body(&self)
        let length = Int32(self.writerIndex - start - 1)
        self.setInteger(length, at: start + 1)
        return self.writerIndex - start
    }

    /// Writes a C string: the UTF-8 bytes and a terminating zero.
    @inlinable
    public mutating func writeCString(_ string: String) {
        self.writeString(string)
        self.writeInteger(UInt8(0))
    }

    /// Reads zero-terminated bytes (for values that need not be UTF-8).
    public mutating func readNullTerminatedBytes() -> ByteBuffer? {
        guard let zero = self.readableBytesView.firstIndex(of: 0) else { return nil }
        let slice = self.readSlice(length: zero - self.readerIndex)
        self.moveReaderIndex(forwardBy: 1)
        return slice
    }
}
