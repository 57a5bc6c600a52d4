import NIOCore
import Testing
import Topology

@testable import Cache

/// Builds pgoutput protocol version 1 messages byte by byte, as
/// https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html lays them out.
enum PgOutputMessage {
    enum Value {
        case null
        case unchanged
        case text(String)
        case binary([UInt8])
    }

    static func begin(finalLSN: UInt64, time: Int64 = 0, xid: UInt32 = 1) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "B"))
        buffer.writeInteger(finalLSN)
        buffer.writeInteger(time)
        buffer.writeInteger(xid)
        return buffer
    }

    static func commit(commitLSN: UInt64, endLSN: UInt64, time: Int64 = 0) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "C"))
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(commitLSN)
        buffer.writeInteger(endLSN)
        buffer.writeInteger(time)
        return buffer
    }

    static func relation(
        oid: UInt32, schema: String = "public", name: String, identity: Unicode.Scalar = "d",
        columns: [(name: String, key: Bool, type: UInt32)]
    ) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "R"))
        buffer.writeInteger(oid)
        buffer.writeNullTerminatedString(schema)
        buffer.writeNullTerminatedString(name)
        buffer.writeInteger(UInt8(ascii: identity))
        buffer.writeInteger(Int16(columns.count))
        for column in columns {
            buffer.writeInteger(UInt8(column.key ? 1 : 0))
            buffer.writeNullTerminatedString(column.name)
            buffer.writeInteger(column.type)
            buffer.writeInteger(Int32(-1))
        }
        return buffer
    }

    static func tuple(_ buffer: inout ByteBuffer, _ values: [Value]) {
        buffer.writeInteger(Int16(values.count))
        for value in values {
            switch value {
            case .null: buffer.writeInteger(UInt8(ascii: "n"))
            case .unchanged: buffer.writeInteger(UInt8(ascii: "u"))
            case .text(let text):
                buffer.writeInteger(UInt8(ascii: "t"))
                buffer.writeInteger(Int32(text.utf8.count))
                buffer.writeString(text)
            case .binary(let bytes):
                buffer.writeInteger(UInt8(ascii: "b"))
                buffer.writeInteger(Int32(bytes.count))
                buffer.writeBytes(bytes)
            }
        }
    }

    static func insert(oid: UInt32, _ values: [Value]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "I"))
        buffer.writeInteger(oid)
        buffer.writeInteger(UInt8(ascii: "N"))
        Self.tuple(&buffer, values)
        return buffer
    }

    static func update(oid: UInt32, old: (kind: Unicode.Scalar, values: [Value])? = nil, new: [Value]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "U"))
        buffer.writeInteger(oid)
        if let old {
            buffer.writeInteger(UInt8(ascii: old.kind))
            Self.tuple(&buffer, old.values)
        }
        buffer.writeInteger(UInt8(ascii: "N"))
        Self.tuple(&buffer, new)
        return buffer
    }

    static func delete(oid: UInt32, kind: Unicode.Scalar = "K", _ values: [Value]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "D"))
        buffer.writeInteger(oid)
        buffer.writeInteger(UInt8(ascii: kind))
        Self.tuple(&buffer, values)
        return buffer
    }

    static func truncate(_ oids: [UInt32], options: UInt8 = 0) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "T"))
        buffer.writeInteger(Int32(oids.count))
        buffer.writeInteger(options)
        for oid in oids { buffer.writeInteger(oid) }
        return buffer
    }

    static func origin(_ name: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "O"))
        buffer.writeInteger(UInt64(0x1234))
        buffer.writeNullTerminatedString(name)
        return buffer
    }

    static func type(oid: UInt32, schema: String, name: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "Y"))
        buffer.writeInteger(oid)
        buffer.writeNullTerminatedString(schema)
        buffer.writeNullTerminatedString(name)
        return buffer
    }

    static func message(prefix: String, content: String, transactional: Bool = true) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "M"))
        buffer.writeInteger(UInt8(transactional ? 1 : 0))
        buffer.writeInteger(UInt64(0x99))
        buffer.writeNullTerminatedString(prefix)
        buffer.writeInteger(Int32(content.utf8.count))
        buffer.writeString(content)
        return buffer
    }
}

@Suite struct PgOutputTests {
    typealias M = PgOutputMessage
    static let ticks: UInt32 = 16_392
    static let other: UInt32 = 16_400
    static let tracked: PgOutputDecoder.TrackedRelations = ["ticks": ("ts", "symbol"), "quotes": ("ts", "symbol")]
    static let t0 = "2024-01-02 03:04:05.123456+00"
    static let t0Micros: Int64 = 1_704_164_645_123_456
    static let t1 = "2024-01-02 03:05:00+00"
    static let t1Micros: Int64 = 1_704_164_700_000_000

    /// ticks(ts, symbol, price) with the replica identity on the columns flagged `key`.
    static func ticksRelation(tsKey: Bool = true, symbolKey: Bool = true, extraKey: Bool = false) -> ByteBuffer {
        M.relation(
            oid: Self.ticks, name: "ticks",
            columns: [("id", extraKey, 20), ("ts", tsKey, 1184), ("symbol", symbolKey, 25), ("price", false, 1700)])
    }

    static func tick(_ instant: Int64?, _ symbol: String?) -> ChangedRow {
        ChangedRow(relation: "ticks", instant: instant, instrument: symbol)
    }

    /// The commit of one transaction of `body` after the Relation message `relation`.
    static func commit(_ body: [ByteBuffer], relation: ByteBuffer = ticksRelation()) throws -> ReplicationCommit? {
        try Self.decode([relation] + Self.transaction(body)).first
    }

    static func row(_ ts: String?, _ symbol: String?, price: String = "1.5") -> [M.Value] {
        [.text("7"), ts.map { .text($0) } ?? .null, symbol.map { .text($0) } ?? .null, .text(price)]
    }

    /// Feeds `messages`; returns the commits they produced.
    static func decode(_ messages: [ByteBuffer], decoder: inout PgOutputDecoder) throws -> [ReplicationCommit] {
        try messages.compactMap { try decoder.decode($0) }
    }

    static func decode(_ messages: [ByteBuffer]) throws -> [ReplicationCommit] {
        var decoder = PgOutputDecoder(trackedRelations: Self.tracked)
        return try Self.decode(messages, decoder: &decoder)
    }

    /// A transaction around `body`.
    static func transaction(_ body: [ByteBuffer], lsn: UInt64 = 0x100) -> [ByteBuffer] {
        [M.begin(finalLSN: lsn, time: 1, xid: 9)] + body + [
            M.commit(commitLSN: lsn, endLSN: lsn + 0x30, time: 5_000_000)
        ]
    }

    @Test func insertsAreHandedOverAtCommit() throws {
        var decoder = PgOutputDecoder(trackedRelations: Self.tracked)
        let before = try Self.decode(
            [
                Self.ticksRelation(), M.begin(finalLSN: 0x1_0000_0100, time: 1, xid: 9),
                M.insert(oid: Self.ticks, Self.row(Self.t0, "AAPL")),
                M.insert(oid: Self.ticks, Self.row(Self.t1, "MSFT")),
            ], decoder: &decoder)
        #expect(before.isEmpty)
        #expect(decoder.inTransaction)
        let commit = try decoder.decode(M.commit(commitLSN: 0x1_0000_0100, endLSN: 0x1_0000_0130, time: 5_000_000))
        #expect(!decoder.inTransaction)
        #expect(
            commit
                == ReplicationCommit(
                    commitLSN: LSN(0x1_0000_0100), endLSN: LSN(0x1_0000_0130),
                    commitTime: TimestampText.postgresEpochMicros + 5_000_000,
                    rows: [
                        Self.tick(Self.t0Micros, "AAPL"),
                        Self.tick(Self.t1Micros, "MSFT"),
                    ],
                    wholeRelations: []))
        #expect(decoder.relation(Self.ticks)?.name == "ticks")
        #expect(decoder.relation(Self.ticks)?.columns == ["id", "ts", "symbol", "price"])
    }

    @Test func rowsOfUntrackedRelationsAreDropped() throws {
        let commits = try Self.decode(
            [M.relation(oid: Self.other, name: "other", columns: [("ts", true, 1184), ("symbol", true, 25)])]
                + Self.transaction([
                    M.insert(oid: Self.other, [.text(Self.t0), .text("AAPL")]), M.truncate([Self.other]),
                ]))
        #expect(commits.count == 1)
        #expect(commits.first?.rows == [])
        #expect(commits.first?.wholeRelations == [])
    }

    @Test func updateWithOldKeyGivesNewAndOldRows() throws {
        let old = (kind: Unicode.Scalar("K"), values: [M.Value.null, .text(Self.t0), .text("AAPL"), .null])
        let commit = try Self.commit([M.update(oid: Self.ticks, old: old, new: Self.row(Self.t1, "AAPL"))])
        #expect(commit?.rows == [Self.tick(Self.t1Micros, "AAPL"), Self.tick(Self.t0Micros, "AAPL")])
        #expect(commit?.wholeRelations == [])
    }

    @Test func updateWithFullOldTuple() throws {
        let old = (kind: Unicode.Scalar("O"), values: Self.row(Self.t0, "AAPL"))
        let commit = try Self.commit([M.update(oid: Self.ticks, old: old, new: Self.row(Self.t1, "MSFT"))])
        #expect(commit?.rows == [Self.tick(Self.t1Micros, "MSFT"), Self.tick(Self.t0Micros, "AAPL")])
    }

    /// No old key: the identity's columns did not change, so the old row has the new row's values there.
    @Test func updateWithoutOldKeyKeepsTheIdentityColumns() throws {
        let update = M.update(oid: Self.ticks, new: Self.row(Self.t0, "AAPL"))
        let row = Self.tick(Self.t0Micros, "AAPL")
        let covered = try Self.commit([update])
        #expect(covered?.rows == [row, row])
        #expect(covered?.wholeRelations == [])
        // Identity (id, symbol): the old row's instant is unknown, its instrument is the new one's.
        let symbolOnly = try Self.commit([update], relation: Self.ticksRelation(tsKey: false, extraKey: true))
        #expect(symbolOnly?.rows == [row, Self.tick(nil, "AAPL")])
        // Identity (id) only: nothing is known of the old row, so the whole relation.
        let neither = try Self.commit(
            [update], relation: Self.ticksRelation(tsKey: false, symbolKey: false, extraKey: true))
        #expect(neither?.rows == [row])
        #expect(neither?.wholeRelations == ["ticks"])
    }

    @Test func deletesFromKeyOrOldTuple() throws {
        let commit = try Self.commit([
            M.delete(oid: Self.ticks, kind: "K", [.null, .text(Self.t0), .text("AAPL"), .null]),
            M.delete(oid: Self.ticks, kind: "O", Self.row(Self.t1, "MSFT")),
        ])
        #expect(commit?.rows == [Self.tick(Self.t0Micros, "AAPL"), Self.tick(Self.t1Micros, "MSFT")])
    }

    @Test func deleteWhoseKeyLacksTimeAndInstrumentIsTheWholeRelation() throws {
        let commit = try Self.commit(
            [M.delete(oid: Self.ticks, [.text("7"), .null, .null, .null])],
            relation: Self.ticksRelation(tsKey: false, symbolKey: false, extraKey: true))
        #expect(commit?.rows == [])
        #expect(commit?.wholeRelations == ["ticks"])
    }

    @Test func unknownValuesAreNil() throws {
        let commits = try Self.decode(
            [Self.ticksRelation()]
                + Self.transaction([
                    M.insert(oid: Self.ticks, Self.row(nil, "AAPL")),
                    M.insert(oid: Self.ticks, Self.row("yesterday", "AAPL")),
                    M.insert(oid: Self.ticks, [.text("7"), .text(Self.t0), .unchanged, .text("1")]),
                    M.insert(
                        oid: Self.ticks, [.text("7"), .binary([0, 1, 2, 3, 4, 5, 6, 7]), .text("IBM"), .text("1")]),
                    M.insert(oid: Self.ticks, [.text("7"), .text("2024-01-02")]),  // fewer columns than the relation
                ]))
        #expect(
            commits.first?.rows == [
                Self.tick(nil, "AAPL"),
                Self.tick(nil, "AAPL"),
                Self.tick(Self.t0Micros, nil),
                Self.tick(nil, "IBM"),
                Self.tick(1_704_153_600_000_000, nil),
            ])
        // Neither value known: the whole relation.
        let unknown = try Self.decode(
            [Self.ticksRelation()] + Self.transaction([M.insert(oid: Self.ticks, Self.row(nil, nil))]))
        #expect(unknown.first?.rows == [])
        #expect(unknown.first?.wholeRelations == ["ticks"])
    }

    @Test func truncateOfTrackedRelations() throws {
        let commits = try Self.decode(
            [
                Self.ticksRelation(), M.relation(oid: Self.other, name: "other", columns: [("id", true, 23)]),
                M.relation(
                    oid: 3, schema: "archive", name: "quotes", columns: [("ts", true, 1184), ("symbol", true, 25)]),
            ]
                + Self.transaction([M.truncate([Self.ticks, Self.other, 3], options: 3)]))
        #expect(commits.first?.rows == [])
        #expect(commits.first?.wholeRelations == ["ticks", "quotes"])
    }

    @Test func originTypeAndLogicalMessagesChangeNothing() throws {
        let commits = try Self.decode(
            [
                M.message(prefix: "outside", content: "x", transactional: false),
                M.type(oid: 77, schema: "public", name: "money2"),
                Self.ticksRelation(),
            ]
                + Self.transaction([
                    M.origin("upstream"), M.message(prefix: "tidegate", content: "hello"),
                    M.insert(oid: Self.ticks, Self.row(Self.t0, "AAPL")),
                ]))
        #expect(commits.first?.rows == [Self.tick(Self.t0Micros, "AAPL")])
    }

    /// A Relation message sent again (ALTER TABLE) replaces the columns the values are read from.
    @Test func relationMessagesReplaceTheMap() throws {
        var decoder = PgOutputDecoder(trackedRelations: Self.tracked)
        let commits = try Self.decode(
            [Self.ticksRelation()] + Self.transaction([M.insert(oid: Self.ticks, Self.row(Self.t0, "AAPL"))])
                + [M.relation(oid: Self.ticks, name: "ticks", columns: [("symbol", true, 25), ("ts", true, 1184)])]
                + Self.transaction([M.insert(oid: Self.ticks, [.text("MSFT"), .text(Self.t1)])], lsn: 0x200),
            decoder: &decoder)
        #expect(
            commits.map(\.rows) == [
                [Self.tick(Self.t0Micros, "AAPL")],
                [Self.tick(Self.t1Micros, "MSFT")],
            ])
        #expect(commits.map(\.endLSN) == [LSN(0x130), LSN(0x230)])
    }

    @Test func rowsBeyondTheLimitCountAsTheWholeRelation() throws {
        var decoder = PgOutputDecoder(trackedRelations: Self.tracked, maxRowsPerTransaction: 2)
        let commits = try Self.decode(
            [Self.ticksRelation()]
                + Self.transaction((0..<5).map { _ in M.insert(oid: Self.ticks, Self.row(Self.t0, "AAPL")) }),
            decoder: &decoder)
        #expect(commits.first?.rows.count == 2)
        #expect(commits.first?.wholeRelations == ["ticks"])
    }

    // MARK: Malformed input

    static func expectError(
        _ code: PgOutputError.Code, _ messages: [ByteBuffer], sourceLocation: SourceLocation = #_sourceLocation
    ) {
        var decoder = PgOutputDecoder(trackedRelations: Self.tracked)
        do {
            for message in messages { _ = try decoder.decode(message) }
            Issue.record("no error", sourceLocation: sourceLocation)
        } catch {
            #expect(error.code == code, sourceLocation: sourceLocation)
        }
    }

    @Test func outOfOrderMessagesAreErrors() {
        Self.expectError(
            .outsideTransaction, [Self.ticksRelation(), M.insert(oid: Self.ticks, Self.row(Self.t0, "AAPL"))])
        Self.expectError(.outsideTransaction, [M.commit(commitLSN: 1, endLSN: 2)])
        Self.expectError(.outsideTransaction, [Self.ticksRelation(), M.truncate([Self.ticks])])
        Self.expectError(.nestedTransaction, [M.begin(finalLSN: 1), M.begin(finalLSN: 2)])
        Self.expectError(.unknownRelation, [M.begin(finalLSN: 1), M.insert(oid: 5, Self.row(Self.t0, "AAPL"))])
        Self.expectError(.unknownRelation, [M.begin(finalLSN: 1), M.truncate([5])])
    }

    @Test func unknownMessagesAndKindsAreErrors() {
        for byte in [
            UInt8(ascii: "S"), UInt8(ascii: "E"), UInt8(ascii: "c"), UInt8(ascii: "A"), UInt8(ascii: "P"), 0, 255,
        ] {
            Self.expectError(.unknownMessage, [ByteBuffer(bytes: [byte, 0, 0, 0, 0])])
        }
        var badKind = M.insert(oid: Self.ticks, Self.row(Self.t0, "AAPL"))
        badKind.setInteger(UInt8(ascii: "X"), at: 5)
        Self.expectError(.unknownMessage, [Self.ticksRelation(), M.begin(finalLSN: 1), badKind])
        var badColumn = M.insert(oid: Self.ticks, [.text("1")])
        badColumn.setInteger(UInt8(ascii: "q"), at: 8)
        Self.expectError(.unknownMessage, [Self.ticksRelation(), M.begin(finalLSN: 1), badColumn])
        var badDelete = M.delete(oid: Self.ticks, Self.row(Self.t0, "AAPL"))
        badDelete.setInteger(UInt8(ascii: "N"), at: 5)
        Self.expectError(.unknownMessage, [Self.ticksRelation(), M.begin(finalLSN: 1), badDelete])
    }

    @Test func badLengthsAreErrors() {
        // A value longer than what is left, a negative one, a huge one.
        for length in [Int32(100), -2, Int32.max] {
            var message = M.insert(oid: Self.ticks, [.text("abcd")])
            message.setInteger(length, at: 9)
            Self.expectError(.invalidLength, [Self.ticksRelation(), M.begin(finalLSN: 1), message])
        }
        var negativeColumns = M.insert(oid: Self.ticks, [])
        negativeColumns.setInteger(Int16(-1), at: 6)
        Self.expectError(.invalidLength, [Self.ticksRelation(), M.begin(finalLSN: 1), negativeColumns])
        var manyColumns = M.insert(oid: Self.ticks, [])
        manyColumns.setInteger(Int16.max, at: 6)
        Self.expectError(.truncated, [Self.ticksRelation(), M.begin(finalLSN: 1), manyColumns])
        var relation = Self.ticksRelation()
        relation.setInteger(Int16(-3), at: 5 + "public".utf8.count + 1 + "ticks".utf8.count + 1 + 1)
        Self.expectError(.invalidLength, [relation])
        for count in [Int32(-1), Int32(1_000_000), Int32.max] {
            var truncate = M.truncate([Self.ticks])
            truncate.setInteger(count, at: 1)
            Self.expectError(.invalidLength, [Self.ticksRelation(), M.begin(finalLSN: 1), truncate])
        }
        var message = M.message(prefix: "p", content: "abc")
        message.setInteger(Int32(-5), at: 1 + 1 + 8 + 2)
        Self.expectError(.invalidLength, [message])
    }

    @Test func trailingBytesAreErrors() {
        var begin = M.begin(finalLSN: 1)
        begin.writeInteger(UInt8(0))
        Self.expectError(.trailingBytes, [begin])
        var insert = M.insert(oid: Self.ticks, Self.row(Self.t0, "AAPL"))
        insert.writeBytes([1, 2])
        Self.expectError(.trailingBytes, [Self.ticksRelation(), M.begin(finalLSN: 1), insert])
    }

    /// Every proper prefix of every message kind fails cleanly (no trap, no partial state taken as valid).
    @Test func everyTruncationIsAnError() {
        let setup = [Self.ticksRelation(), M.begin(finalLSN: 1)]
        let messages = [
            M.begin(finalLSN: 1), M.commit(commitLSN: 1, endLSN: 2), M.origin("o"),
            M.type(oid: 1, schema: "s", name: "t"),
            M.message(prefix: "p", content: "abc"), Self.ticksRelation(),
            M.insert(oid: Self.ticks, Self.row(Self.t0, "AAPL")),
            M.update(oid: Self.ticks, old: ("K", Self.row(Self.t0, "AAPL")), new: Self.row(Self.t1, "AAPL")),
            M.update(oid: Self.ticks, new: [.unchanged, .null, .binary([1])]),
            M.delete(oid: Self.ticks, Self.row(Self.t0, "AAPL")),
            M.truncate([Self.ticks, Self.ticks]),
        ]
        for message in messages {
            for length in 0..<message.readableBytes {
                var decoder = PgOutputDecoder(trackedRelations: Self.tracked)
                for part in setup { _ = try? decoder.decode(part) }
                if message.getInteger(at: 0, as: UInt8.self) == UInt8(ascii: "B") {
                    _ = try? decoder.decode(M.commit(commitLSN: 1, endLSN: 2))
                }
                let prefix = message.getSlice(at: 0, length: length)!
                #expect(
                    throws: PgOutputError.self, "\(message.getInteger(at: 0, as: UInt8.self) ?? 0) cut at \(length)"
                ) {
                    _ = try decoder.decode(prefix)
                }
            }
        }
    }

    /// Random bytes after a valid setup never trap.
    @Test func randomBytesNeverTrap() {
        var generator = SplitMix64(seed: 99)
        let kinds: [UInt8] = Array("BCORYIUDTM".utf8)
        for _ in 0..<5_000 {
            var decoder = PgOutputDecoder(trackedRelations: Self.tracked)
            _ = try? decoder.decode(Self.ticksRelation())
            _ = try? decoder.decode(M.begin(finalLSN: 1))
            var bytes = [kinds[Int(generator.next() % UInt64(kinds.count))]]
            for _ in 0..<Int(generator.next() % 40) { bytes.append(UInt8(truncatingIfNeeded: generator.next())) }
            _ = try? decoder.decode(ByteBuffer(bytes: bytes))
        }
    }

    // MARK: A recorded stream

    static func bytes(hex: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        var iterator = hex.utf8.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            buffer.writeInteger(UInt8(Self.nibble(high) << 4 | Self.nibble(low)))
        }
        return buffer
    }

    static func nibble(_ byte: UInt8) -> UInt8 {
        byte <= UInt8(ascii: "9") ? byte - UInt8(ascii: "0") : byte - UInt8(ascii: "a") + 10
    }

    @Test func recordedStreamFromPostgres15() throws {
        var decoder = PgOutputDecoder(trackedRelations: ["ticks": ("ts", "symbol")])
        let commits = try RecordedStream.messages.compactMap { try decoder.decode(Self.bytes(hex: $0.hex)) }
        func tick(_ text: String, _ symbol: String) -> ChangedRow {
            Self.tick(TimestampText.micros(text)!.micros, symbol)
        }
        #expect(commits.count == 5)
        guard commits.count == 5 else { return }
        #expect(
            commits[0].rows == [
                Self.tick(1_704_164_645_123_456, "AAPL"),
                Self.tick(1_704_164_646_000_000, "MSFT"),
                Self.tick(1_709_251_200_000_000, "AAPL"),
            ])
        #expect(commits[1].rows == [tick("2024-01-02 03:05:00+00", "MSFT"), tick("2024-01-02 03:04:06+00", "MSFT")])
        #expect(
            commits[2].rows == [
                tick("2024-01-02 03:04:05.123456+00", "AAPL"), tick("2024-01-02 03:04:05.123456+00", "AAPL"),
            ])
        #expect(commits[3].rows == [tick("2024-03-01 00:00:00+00", "AAPL")])
        #expect(commits[4].rows == [])
        #expect(commits.map(\.wholeRelations) == [[], [], [], [], ["ticks"]])
        #expect(commits[0].commitLSN == LSN("0/4448720"))
        #expect(commits[0].endLSN == LSN("0/4448750"))
        #expect(commits.map(\.endLSN.description) == ["0/4448750", "0/4448838", "0/44488C0", "0/4448940", "0/444A330"])
        for (earlier, later) in zip(commits, commits.dropFirst()) {
            #expect(earlier.endLSN < later.commitLSN)
            #expect(earlier.commitTime <= later.commitTime)
        }
        for commit in commits { #expect(commit.commitLSN < commit.endLSN) }
        // Recorded on 2026-era lab clocks: a plausible Unix time in microseconds.
        #expect(commits[0].commitTime > 1_600_000_000_000_000)
        // With publish_via_partition_root, rows name the root; the partitions' Relation messages come too.
        #expect(decoder.relation(16_392)?.name == "ticks")
    }
}
