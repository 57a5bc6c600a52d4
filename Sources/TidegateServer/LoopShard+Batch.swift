import NIOCore
import SQLAnalysis

extension LoopShard {
    /// The batchable shape of a statement text (memoized per text), or nil. Only texts that start with
    /// INSERT (after spaces and comments the quick scan skips) are parsed at all.
    func insertShape(_ query: ByteBuffer) -> InsertShape? {
        guard !self.config.batchedRelations.isEmpty else { return nil }
        if let memo = self.insertShapeMemo[query] { return memo }
        var shape: InsertShape?
        if query.withUnsafeReadableBytes(Self.startsWithInsert) {
            if case .success(let parsed) = InsertAnalyzer.analyze(String(buffer: query)),
                self.config.relations[parsed.relation]?.batch.enabled == true
            {
                shape = parsed
            }
        }
        if self.insertShapeMemo.count >= Self.profileMemoLimit { self.insertShapeMemo.removeAll(keepingCapacity: true) }
        self.insertShapeMemo[ByteBuffer(bytes: query.readableBytesView)] = shape
        return shape
    }

    /// Whether the first word, after white space and comments, is INSERT (any case).
    static func startsWithInsert(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var index = 0
        let count = bytes.count
        while index < count {
            let byte = bytes[index]
            if byte == 32 || byte == 9 || byte == 10 || byte == 13 {
                index += 1
            } else if byte == UInt8(ascii: "-"), index + 1 < count, bytes[index + 1] == UInt8(ascii: "-") {
                while index < count && bytes[index] != 10 { index += 1 }
            } else if byte == UInt8(ascii: "/"), index + 1 < count, bytes[index + 1] == UInt8(ascii: "*") {
                index += 2
                while index + 1 < count && !(bytes[index] == UInt8(ascii: "*") && bytes[index + 1] == UInt8(ascii: "/")) { index += 1 }
                index += 2
            } else {
                break
            }
        }
        let word = Array("insert".utf8)
        guard index + word.count < count else { return false }
        for (offset, letter) in word.enumerated() where bytes[index + offset] | 0x20 != letter { return false }
        let after = bytes[index + word.count]
        return !((after | 0x20) >= 97 && (after | 0x20) <= 122) && after != UInt8(ascii: "_")
    }
}
