import NIOCore
import SQLAnalysis

/// A statement text the batcher takes.
struct BatchableInsert {
    var shape: InsertShape
    /// Under `on_conflict: ignore`: the text with `ON CONFLICT DO NOTHING`, run when the statement runs as
    /// its client sent it (alone after a failed batch, or of a shape that cannot be batched).
    var ignoringConflicts: ByteBuffer?
}

/// What the batcher knows of a statement text.
enum InsertMemo {
    case batchable(BatchableInsert)
    /// An INSERT into a batched relation in a form that is not batched.
    case refused(relation: String, reason: String)
    case other
}

extension LoopShard {
    /// The batchable form of a statement text (memoized per text), or nil. Only texts that start with
    /// INSERT (after spaces and comments) are parsed at all.
    func batchableInsert(_ query: ByteBuffer) -> BatchableInsert? {
        if case .batchable(let insert) = self.insertMemo(query) { return insert }
        return nil
    }

    /// An INSERT into a batched relation that cannot be batched for its form (rows of different shapes, an
    /// expression Tidegate does not rebuild): counted with its reason in SHOW BATCHES. Statements that are
    /// never batched by design (RETURNING, ON CONFLICT, WITH, INSERT … SELECT) are not counted.
    func noteNotBatched(_ query: ByteBuffer, database: String) {
        guard case .refused(let relation, let reason) = self.insertMemo(query) else { return }
        self.runtime.batchStats.unbatchable(database: database, relation: relation, reason: reason)
    }

    private func insertMemo(_ query: ByteBuffer) -> InsertMemo {
        guard self.batcher != nil else { return .other }
        if let memo = self.insertShapeMemo[query] { return memo }
        var memo = InsertMemo.other
        if query.withUnsafeReadableBytes(Self.startsWithInsert) {
            switch InsertAnalyzer.analyze(String(buffer: query)) {
            case .success(let parsed):
                if let batch = self.config.relations[parsed.relation]?.batch, batch.enabled {
                    if !batch.ignoreConflicts {
                        memo = .batchable(BatchableInsert(shape: parsed))
                    } else if let ignoring = Self.ignoringConflicts(query) {
                        memo = .batchable(BatchableInsert(shape: parsed, ignoringConflicts: ignoring))
                    } else {
                        memo = .refused(relation: parsed.relation, reason: "on_conflict: ignore needs the text in UTF-8")
                    }
                }
            case .failure(let refusal):
                if let relation = refusal.relation, self.config.relations[relation]?.batch.enabled == true,
                    !Self.notBatchedByDesign.contains(refusal.reason)
                {
                    memo = .refused(relation: relation, reason: refusal.reason)
                }
            }
        }
        if self.insertShapeMemo.count >= Self.profileMemoLimit { self.insertShapeMemo.removeAll(keepingCapacity: true) }
        self.insertShapeMemo[ByteBuffer(bytes: query.readableBytesView)] = memo
        return memo
    }

    /// The text of one INSERT with `ON CONFLICT DO NOTHING` (nil when it is not UTF-8 or not one statement).
    static func ignoringConflicts(_ query: ByteBuffer) -> ByteBuffer? {
        guard let text = String(validating: query.readableBytesView, as: UTF8.self) else { return nil }
        let statements = SQLLexer.statements(in: text)
        guard statements.count == 1 else { return nil }
        return ByteBuffer(string: statements[0].text + "\nON CONFLICT DO NOTHING")
    }

    static let notBatchedByDesign: Set<String> = ["RETURNING", "ON CONFLICT", "WITH", "OVERRIDING", "not INSERT … VALUES", "not a single INSERT"]

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
