import NIOCore
import Topology

/// The changes of one committed transaction to the tracked relations, as the cache needs them: which
/// (relation, instant, instrument) were written, and which relations changed as a whole.
public struct ReplicationCommit: Sendable, Equatable {
    /// The LSN of the commit record.
    public var commitLSN: LSN
    /// The end of the commit record: once this is applied, everything up to here is.
    public var endLSN: LSN
    /// Microseconds since the Unix epoch.
    public var commitTime: Int64
    public var rows: [ChangedRow]
    /// Tracked relations whose changed rows are not known one by one (TRUNCATE, a delete or update whose
    /// old values the replica identity does not carry, or more rows than the decoder keeps).
    public var wholeRelations: Set<String>

    public init(commitLSN: LSN, endLSN: LSN, commitTime: Int64, rows: [ChangedRow], wholeRelations: Set<String>) {
        self.commitLSN = commitLSN
        self.endLSN = endLSN
        self.commitTime = commitTime
        self.rows = rows
        self.wholeRelations = wholeRelations
    }
}

/// One row version written by a transaction: a new row, or the old version of an updated or deleted one.
/// nil where the value is not known (NULL, an unchanged TOAST value, not in the old key, unparsable);
/// the cache takes nil as "every instant" or "every instrument".
public struct ChangedRow: Sendable, Hashable {
    /// The tracked relation's name as configured (unqualified), e.g. `ticks`.
    public var relation: String
    /// Microseconds since the Unix epoch.
    public var instant: Int64?
    public var instrument: String?

    public init(relation: String, instant: Int64?, instrument: String?) {
        self.relation = relation
        self.instant = instant
        self.instrument = instrument
    }
}

/// Input the decoder cannot read. The listener drops the connection on it (a new slot starts from a
/// clean state and the cache is invalidated as a whole), so nothing here needs to be recoverable.
public struct PgOutputError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        public let name: String

        public static let truncated = Code(name: "truncated")
        public static let trailingBytes = Code(name: "trailing bytes")
        public static let invalidLength = Code(name: "invalid length")
        public static let unknownMessage = Code(name: "unknown message")
        public static let unknownRelation = Code(name: "unknown relation")
        public static let outsideTransaction = Code(name: "change outside a transaction")
        public static let nestedTransaction = Code(name: "Begin inside a transaction")

        public var description: String { self.name }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "pgoutput: \(self.code): \(self.message)" }
}

/// Decodes the messages of PostgreSQL's `pgoutput` plugin, protocol version 1 (the payloads of
/// XLogData): keeps the relation map, buffers one transaction's changed rows of the tracked relations and
/// hands them over at its Commit. Pure: bytes in, values out. Every length is checked against what the
/// message holds, so malformed input gives a `PgOutputError`, never a trap.
/// https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html
public struct PgOutputDecoder: Sendable {
    /// Tracked relations by unqualified name: the columns holding each row's instant and instrument.
    public typealias TrackedRelations = [String: (timeColumn: String, instrumentColumn: String)]

    public enum MessageID: UInt8, Sendable {
        case begin = 66  // B
        case commit = 67  // C
        case origin = 79  // O
        case relation = 82  // R
        case type = 89  // Y
        case insert = 73  // I
        case update = 85  // U
        case delete = 68  // D
        case truncate = 84  // T
        case message = 77  // M
    }

    /// What a Relation message said, and for a tracked relation where its time and instrument are.
    struct Relation: Sendable {
        var schema: String
        var name: String
        var columns: [String]
        var tracked: Tracked?
    }

    struct Tracked: Sendable {
        var name: String
        var timeIndex: Int?
        var instrumentIndex: Int?
        /// Whether the column is part of the replica identity: an update that sends no old key left it
        /// unchanged, and a delete's key carries it.
        var timeIsKey: Bool
        var instrumentIsKey: Bool
    }

    struct Transaction: Sendable {
        var finalLSN: LSN
        var rows: [ChangedRow] = []
        var wholeRelations: Set<String> = []
    }

    let tracked: TrackedRelations
    /// Rows kept per transaction; beyond it a relation's further rows count as the whole relation, so a
    /// bulk load does not hold a row per inserted row in memory.
    public let maxRowsPerTransaction: Int
    private var relations: [UInt32: Relation] = [:]
    private var transaction: Transaction?

    public init(trackedRelations: TrackedRelations, maxRowsPerTransaction: Int = 200_000) {
        self.tracked = trackedRelations
        self.maxRowsPerTransaction = maxRowsPerTransaction
    }

    /// Whether a Begin was read and its Commit not yet.
    public var inTransaction: Bool { self.transaction != nil }

    /// The relation map entry for `oid`: what the last Relation message for it said.
    public func relation(_ oid: UInt32) -> (schema: String, name: String, columns: [String])? {
        self.relations[oid].map { ($0.schema, $0.name, $0.columns) }
    }

    /// Reads one message; returns the transaction's changes at its Commit, nil otherwise.
    public mutating func decode(_ message: ByteBuffer) throws(PgOutputError) -> ReplicationCommit? {
        var body = message
        let byte = try Self.read(&body, as: UInt8.self, "message type")
        guard let id = MessageID(rawValue: byte) else {
            throw PgOutputError(.unknownMessage, "message type \(byte) is not part of pgoutput protocol version 1")
        }
        var commit: ReplicationCommit?
        switch id {
        case .begin:
            guard self.transaction == nil else { throw PgOutputError(.nestedTransaction, "Begin before the Commit") }
            let finalLSN = try Self.read(&body, as: UInt64.self, "Begin")
            _ = try Self.read(&body, as: Int64.self, "Begin")  // commit time, repeated in Commit
            _ = try Self.read(&body, as: UInt32.self, "Begin")  // xid
            self.transaction = Transaction(finalLSN: LSN(finalLSN))
        case .commit:
            guard let transaction = self.transaction else {
                throw PgOutputError(.outsideTransaction, "Commit without a Begin")
            }
            _ = try Self.read(&body, as: UInt8.self, "Commit")  // flags, unused
            let commitLSN = try Self.read(&body, as: UInt64.self, "Commit")
            let endLSN = try Self.read(&body, as: UInt64.self, "Commit")
            let time = try Self.read(&body, as: Int64.self, "Commit")
            self.transaction = nil
            commit = ReplicationCommit(
                commitLSN: LSN(commitLSN), endLSN: LSN(endLSN), commitTime: Self.unixMicros(postgres: time),
                rows: transaction.rows, wholeRelations: transaction.wholeRelations)
        case .origin:
            _ = try Self.read(&body, as: UInt64.self, "Origin")
            _ = try Self.readString(&body, "Origin")
        case .type:
            _ = try Self.read(&body, as: UInt32.self, "Type")
            _ = try Self.readString(&body, "Type")
            _ = try Self.readString(&body, "Type")
        case .message:
            // Logical messages (pg_logical_emit_message) change no rows.
            _ = try Self.read(&body, as: UInt8.self, "Message")
            _ = try Self.read(&body, as: UInt64.self, "Message")
            _ = try Self.readString(&body, "Message")
            let length = try Self.read(&body, as: Int32.self, "Message")
            _ = try Self.readSlice(&body, length: length, "Message")
        case .relation:
            try self.relationMessage(&body)
        case .insert:
            let relation = try self.changedRelation(&body, "Insert")
            try Self.expect(&body, "N", "Insert")
            let new = try Self.readTuple(&body, relation)
            try self.record(new, relation)
        case .update:
            let relation = try self.changedRelation(&body, "Update")
            var kind = try Self.read(&body, as: UInt8.self, "Update")
            var old: TupleValues?
            if kind == UInt8(ascii: "K") || kind == UInt8(ascii: "O") {
                old = try Self.readTuple(&body, relation)
                kind = try Self.read(&body, as: UInt8.self, "Update")
            }
            guard kind == UInt8(ascii: "N") else {
                throw PgOutputError(.unknownMessage, "Update: tuple kind \(kind) where 'N' belongs")
            }
            let new = try Self.readTuple(&body, relation)
            try self.record(new, relation)
            if let old {
                try self.record(old, relation)
            } else if let tracked = relation.tracked {
                // No old key: the replica identity did not change, so the old row has the new row's
                // values in the identity's columns, and unknown ones elsewhere.
                try self.record(
                    TupleValues(
                        instant: tracked.timeIsKey ? new.instant : nil,
                        instrument: tracked.instrumentIsKey ? new.instrument : nil),
                    relation)
            }
        case .delete:
            let relation = try self.changedRelation(&body, "Delete")
            let kind = try Self.read(&body, as: UInt8.self, "Delete")
            guard kind == UInt8(ascii: "K") || kind == UInt8(ascii: "O") else {
                throw PgOutputError(.unknownMessage, "Delete: tuple kind \(kind) where 'K' or 'O' belongs")
            }
            let old = try Self.readTuple(&body, relation)
            try self.record(old, relation)
        case .truncate:
            guard self.transaction != nil else { throw PgOutputError(.outsideTransaction, "Truncate") }
            let count = try Self.read(&body, as: Int32.self, "Truncate")
            _ = try Self.read(&body, as: UInt8.self, "Truncate")  // CASCADE / RESTART IDENTITY
            guard count >= 0, Int(count) * 4 <= body.readableBytes else {
                throw PgOutputError(.invalidLength, "Truncate of \(count) relations in \(body.readableBytes) bytes")
            }
            for _ in 0..<count {
                let oid = try Self.read(&body, as: UInt32.self, "Truncate")
                guard let relation = self.relations[oid] else {
                    throw PgOutputError(.unknownRelation, "Truncate of relation \(oid) before its Relation message")
                }
                if let tracked = relation.tracked { self.transaction?.wholeRelations.insert(tracked.name) }
            }
        }
        guard body.readableBytes == 0 else {
            throw PgOutputError(.trailingBytes, "\(body.readableBytes) bytes after a \(id) message")
        }
        return commit
    }

    private mutating func relationMessage(_ body: inout ByteBuffer) throws(PgOutputError) {
        let oid = try Self.read(&body, as: UInt32.self, "Relation")
        let schema = try Self.readString(&body, "Relation")
        let name = try Self.readString(&body, "Relation")
        _ = try Self.read(&body, as: UInt8.self, "Relation")  // replica identity setting
        let count = try Self.read(&body, as: Int16.self, "Relation")
        guard count >= 0 else { throw PgOutputError(.invalidLength, "Relation with \(count) columns") }
        var columns: [String] = []
        var keys: [Bool] = []
        for _ in 0..<count {
            let flags = try Self.read(&body, as: UInt8.self, "Relation column")
            columns.append(try Self.readString(&body, "Relation column"))
            _ = try Self.read(&body, as: UInt32.self, "Relation column")  // type
            _ = try Self.read(&body, as: Int32.self, "Relation column")  // typmod
            keys.append(flags & 1 != 0)
        }
        var relation = Relation(schema: schema, name: name, columns: columns)
        if let trackedColumns = self.tracked[name] {
            let timeIndex = columns.firstIndex(of: trackedColumns.timeColumn)
            let instrumentIndex = columns.firstIndex(of: trackedColumns.instrumentColumn)
            relation.tracked = Tracked(
                name: name, timeIndex: timeIndex, instrumentIndex: instrumentIndex,
                timeIsKey: timeIndex.map { keys[$0] } ?? false,
                instrumentIsKey: instrumentIndex.map { keys[$0] } ?? false)
        }
        self.relations[oid] = relation
    }

    private func changedRelation(_ body: inout ByteBuffer, _ what: String) throws(PgOutputError) -> Relation {
        guard self.transaction != nil else { throw PgOutputError(.outsideTransaction, what) }
        let oid = try Self.read(&body, as: UInt32.self, what)
        guard let relation = self.relations[oid] else {
            throw PgOutputError(.unknownRelation, "\(what) of relation \(oid) before its Relation message")
        }
        return relation
    }

    /// The values of a tuple that the cache needs.
    struct TupleValues {
        var instant: Int64?
        var instrument: String?
    }

    /// Reads TupleData and keeps the instant and instrument of a tracked relation.
    private static func readTuple(_ body: inout ByteBuffer, _ relation: Relation) throws(PgOutputError) -> TupleValues {
        let count = try Self.read(&body, as: Int16.self, "TupleData")
        guard count >= 0 else { throw PgOutputError(.invalidLength, "TupleData with \(count) columns") }
        var values = TupleValues()
        for index in 0..<Int(count) {
            let kind = try Self.read(&body, as: UInt8.self, "TupleData")
            switch kind {
            case UInt8(ascii: "n"), UInt8(ascii: "u"):
                // NULL, or a TOASTed value the update did not change (its value is not sent): unknown.
                continue
            case UInt8(ascii: "t"), UInt8(ascii: "b"):
                let length = try Self.read(&body, as: Int32.self, "TupleData")
                let value = try Self.readSlice(&body, length: length, "TupleData")
                // Binary values are never asked for; if one came, its text form is not known.
                guard kind == UInt8(ascii: "t"), let tracked = relation.tracked else { continue }
                if index == tracked.timeIndex {
                    values.instant = TimestampText.micros(utf8: value.readableBytesView)?.micros
                } else if index == tracked.instrumentIndex {
                    values.instrument = String(buffer: value)
                }
            default:
                throw PgOutputError(.unknownMessage, "TupleData: column kind \(kind)")
            }
        }
        return values
    }

    /// Adds a row of a tracked relation to the open transaction; rows of other relations are dropped.
    private mutating func record(_ values: TupleValues, _ relation: Relation) throws(PgOutputError) {
        guard let tracked = relation.tracked else { return }
        guard var transaction = self.transaction else { throw PgOutputError(.outsideTransaction, "row change") }
        self.transaction = nil
        if values.instant == nil && values.instrument == nil || transaction.rows.count >= self.maxRowsPerTransaction {
            // Nothing known of the row, or too many rows to keep: the relation as a whole.
            transaction.wholeRelations.insert(tracked.name)
        } else {
            transaction.rows.append(
                ChangedRow(relation: tracked.name, instant: values.instant, instrument: values.instrument))
        }
        self.transaction = transaction
    }

    /// PostgreSQL timestamps count microseconds from 2000-01-01.
    static func unixMicros(postgres micros: Int64) -> Int64 {
        let (sum, overflow) = micros.addingReportingOverflow(TimestampText.postgresEpochMicros)
        return overflow ? Int64.max : sum
    }

    private static func read<T: FixedWidthInteger>(
        _ body: inout ByteBuffer, as: T.Type, _ what: String
    ) throws(PgOutputError) -> T {
        guard let value = body.readInteger(as: T.self) else { throw PgOutputError(.truncated, what) }
        return value
    }

    private static func readString(_ body: inout ByteBuffer, _ what: String) throws(PgOutputError) -> String {
        guard let value = body.readNullTerminatedString() else {
            throw PgOutputError(.truncated, "\(what): unterminated string")
        }
        return value
    }

    private static func readSlice(
        _ body: inout ByteBuffer, length: Int32, _ what: String
    ) throws(PgOutputError) -> ByteBuffer {
        guard length >= 0, Int(length) <= body.readableBytes, let slice = body.readSlice(length: Int(length)) else {
            throw PgOutputError(.invalidLength, "\(what): value of \(length) bytes with \(body.readableBytes) left")
        }
        return slice
    }

    private static func expect(_ body: inout ByteBuffer, _ kind: Unicode.Scalar, _ what: String) throws(PgOutputError) {
        let byte = try Self.read(&body, as: UInt8.self, what)
        guard byte == UInt8(ascii: kind) else {
            throw PgOutputError(.unknownMessage, "\(what): tuple kind \(byte) where '\(kind)' belongs")
        }
    }
}
