import Cache
import NIOCore
import PostgresWire
import Testing
import Topology

@testable import TidegateServer

/// The listener's protocol logic stepped with plain values: CopyData frames in, actions out, a clock
/// passed by hand.
@Suite struct ReplicationStateMachineTests {
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    static func at(_ milliseconds: Int64) -> NIODeadline { Self.start + .milliseconds(milliseconds) }

    static func machine(maxPending: Int = 4) -> ReplicationStateMachine {
        var machine = ReplicationStateMachine(
            relations: ["ticks": ("ts", "symbol")], maxPendingCommits: maxPending, freshFor: .seconds(1),
            silenceLimit: .seconds(10), now: Self.start)
        machine.connecting(node: "127.0.0.1:15432", slot: "tidegate_1")
        machine.slotReady(at: LSN(0x100))
        machine.streamStarted(now: Self.start)
        return machine
    }

    static func copyData(_ body: (inout ByteBuffer) -> Void) -> PostgresFrame {
        var buffer = ByteBuffer()
        body(&buffer)
        return PostgresFrame(id: BackendMessageID.copyData.rawValue, body: buffer)
    }

    static func xLogData(_ payload: ByteBuffer) -> PostgresFrame {
        Self.copyData { buffer in
            buffer.writeInteger(UInt8(ascii: "w"))
            buffer.writeInteger(UInt64(0x100))
            buffer.writeInteger(UInt64(0x100))
            buffer.writeInteger(Int64(0))
            buffer.writeImmutableBuffer(payload)
        }
    }

    static func keepalive(_ walEnd: UInt64, reply: Bool = false) -> PostgresFrame {
        Self.copyData { buffer in
            buffer.writeInteger(UInt8(ascii: "k"))
            buffer.writeInteger(walEnd)
            buffer.writeInteger(Int64(0))
            buffer.writeInteger(UInt8(reply ? 1 : 0))
        }
    }

    static let relation: ByteBuffer = {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "R"))
        buffer.writeInteger(UInt32(10))
        buffer.writeNullTerminatedString("public")
        buffer.writeNullTerminatedString("ticks")
        buffer.writeInteger(UInt8(ascii: "d"))
        buffer.writeInteger(Int16(2))
        for name in ["ts", "symbol"] {
            buffer.writeInteger(UInt8(1))
            buffer.writeNullTerminatedString(name)
            buffer.writeInteger(UInt32(25))
            buffer.writeInteger(Int32(-1))
        }
        return buffer
    }()

    /// Begin, one insert, Commit: the frames of one transaction ending at `end`.
    static func transaction(commit: UInt64, end: UInt64, symbol: String = "AAPL") -> [PostgresFrame] {
        var begin = ByteBuffer()
        begin.writeInteger(UInt8(ascii: "B"))
        begin.writeInteger(commit)
        begin.writeInteger(Int64(0))
        begin.writeInteger(UInt32(1))
        var insert = ByteBuffer()
        insert.writeInteger(UInt8(ascii: "I"))
        insert.writeInteger(UInt32(10))
        insert.writeInteger(UInt8(ascii: "N"))
        insert.writeInteger(Int16(2))
        for value in ["2024-01-02 03:04:05+00", symbol] {
            insert.writeInteger(UInt8(ascii: "t"))
            insert.writeInteger(Int32(value.utf8.count))
            insert.writeString(value)
        }
        var done = ByteBuffer()
        done.writeInteger(UInt8(ascii: "C"))
        done.writeInteger(UInt8(0))
        done.writeInteger(commit)
        done.writeInteger(end)
        done.writeInteger(Int64(0))
        return [begin, insert, done].map(Self.xLogData)
    }

    /// Feeds frames; returns the actions that are not `.none`.
    static func feed(
        _ machine: inout ReplicationStateMachine, _ frames: [PostgresFrame], at milliseconds: Int64
    )
        -> [ReplicationStateMachine.Action]
    {
        frames.map { machine.copyData($0, now: Self.at(milliseconds)) }.filter { $0 != .none }
    }

    static func applies(_ actions: [ReplicationStateMachine.Action]) -> [LSN] {
        actions.compactMap { action in
            if case .apply(let commit) = action { return commit.endLSN }
            return nil
        }
    }

    @Test func commitsAreAppliedInOrderAndWhatQueuedGoesAsOne() {
        var machine = Self.machine()
        _ = machine.copyData(Self.xLogData(Self.relation), now: Self.at(0))
        let first = Self.feed(&machine, Self.transaction(commit: 0x200, end: 0x230), at: 1)
        #expect(Self.applies(first) == [LSN(0x230)])
        // While the first is applied, the next waits.
        let second = Self.feed(
            &machine, Self.transaction(commit: 0x300, end: 0x330) + Self.transaction(commit: 0x400, end: 0x430), at: 2)
        #expect(second.isEmpty)
        #expect(machine.status.commits == 3)
        #expect(machine.status.rows == 3)
        // The two that queued are applied together: their rows, up to the second's end.
        let merged = machine.applySucceeded()
        #expect(Self.applies([merged]) == [LSN(0x430)])
        if case .apply(let commit) = merged { #expect(commit.rows.count == 2) }
        #expect(machine.status.lastCommitLSN == LSN(0x230))
        #expect(machine.status.appliedLSN == LSN(0x230))
        #expect(machine.applySucceeded() == .none)
        #expect(machine.status.appliedLSN == LSN(0x430))
        // The status update reports what is applied.
        #expect(machine.statusTick(now: Self.at(100)) == .sendStatus(LSN(0x430), replyRequested: true))
    }

    @Test func lagIsZeroOnlyWhenEverythingUpToTheKeepaliveIsApplied() {
        var machine = Self.machine()
        // Not caught up before any keepalive: the time since the listener started.
        #expect(machine.lagMillis(now: Self.at(50)) == 50)
        #expect(machine.copyData(Self.keepalive(0x100), now: Self.at(100)) == .none)
        #expect(machine.lagMillis(now: Self.at(120)) == 0)
        _ = machine.copyData(Self.xLogData(Self.relation), now: Self.at(150))
        _ = Self.feed(&machine, Self.transaction(commit: 0x200, end: 0x230), at: 200)
        // The server is ahead of what is applied: lag counts from the last catch-up (the keepalive at 100).
        _ = machine.copyData(Self.keepalive(0x230), now: Self.at(300))
        #expect(machine.lagMillis(now: Self.at(400)) == 300)
        // Applied: caught up as of the keepalive at 300.
        _ = machine.applySucceeded()
        #expect(machine.lagMillis(now: Self.at(450)) == 0)
        #expect(machine.caughtUpAt == Self.at(300))
        // A keepalive that is too old no longer shows it caught up.
        #expect(machine.lagMillis(now: Self.at(1_500)) == 1_200)
    }

    /// WAL that holds nothing published (other tables, other databases) moves the walsender's position
    /// without a commit: with nothing pending, that position counts as applied.
    @Test func idleKeepalivesAdvanceThePosition() {
        var machine = Self.machine()
        _ = machine.copyData(Self.keepalive(0x900), now: Self.at(10))
        #expect(machine.status.appliedLSN == LSN(0x900))
        #expect(machine.status.serverWALEnd == LSN(0x900))
        #expect(machine.lagMillis(now: Self.at(20)) == 0)
        #expect(machine.statusTick(now: Self.at(100)) == .sendStatus(LSN(0x900), replyRequested: true))
    }

    @Test func keepalivesDuringATransactionDoNotAdvance() {
        var machine = Self.machine()
        _ = machine.copyData(Self.xLogData(Self.relation), now: Self.at(0))
        let frames = Self.transaction(commit: 0x200, end: 0x230)
        _ = Self.feed(&machine, Array(frames.prefix(2)), at: 1)
        _ = machine.copyData(Self.keepalive(0x1F0), now: Self.at(2))
        #expect(machine.status.appliedLSN == LSN(0x100))
        #expect(machine.lagMillis(now: Self.at(5)) == 5)
        #expect(Self.applies(Self.feed(&machine, [frames[2]], at: 3)) == [LSN(0x230)])
        // Keepalive while the commit is being applied: not idle either.
        _ = machine.copyData(Self.keepalive(0x240), now: Self.at(4))
        #expect(machine.status.appliedLSN == LSN(0x100))
        _ = machine.applySucceeded()
        // Applied with nothing else pending: everything up to the last keepalive is.
        #expect(machine.status.appliedLSN == LSN(0x240))
        #expect(machine.lagMillis(now: Self.at(6)) == 0)
    }

    @Test func keepaliveAskingForAReplyIsAnswered() {
        var machine = Self.machine()
        #expect(
            machine.copyData(Self.keepalive(0x100, reply: true), now: Self.at(1))
                == .sendStatus(LSN(0x100), replyRequested: false))
    }

    @Test func tooManyPendingCommitsStopReading() {
        var machine = Self.machine(maxPending: 2)
        _ = machine.copyData(Self.xLogData(Self.relation), now: Self.at(0))
        for index in 0..<3 {
            _ = Self.feed(
                &machine, Self.transaction(commit: UInt64(0x200 + index * 0x100), end: UInt64(0x230 + index * 0x100)),
                at: 1)
        }
        #expect(!machine.wantsReading)
        _ = machine.applySucceeded()
        #expect(machine.wantsReading)
    }

    @Test func failuresEndTheConnection() {
        var machine = Self.machine()
        // A pgoutput message the decoder cannot read.
        if case .fail = machine.copyData(Self.xLogData(ByteBuffer(bytes: [UInt8(ascii: "I"), 0, 0])), now: Self.at(1)) {
        } else {
            Issue.record("an invalid pgoutput message must end the connection")
        }
        var second = Self.machine()
        if case .fail = second.copyData(Self.copyData { $0.writeInteger(UInt8(ascii: "q")) }, now: Self.at(1)) {
        } else {
            Issue.record("an unknown replication message must end the connection")
        }
        var third = Self.machine()
        _ = third.copyData(Self.xLogData(Self.relation), now: Self.at(0))
        _ = Self.feed(&third, Self.transaction(commit: 0x200, end: 0x230), at: 1)
        if case .fail = third.applyFailed("redis is down") {
        } else {
            Issue.record("a failed apply must end the connection")
        }
        // Nothing heard for longer than the silence limit.
        var fourth = Self.machine()
        #expect(fourth.statusTick(now: Self.at(9_000)) == .sendStatus(LSN(0x100), replyRequested: true))
        if case .fail = fourth.statusTick(now: Self.at(10_001)) {
        } else {
            Issue.record("silence must end the connection")
        }
    }

    @Test func disconnectingDropsWhatWasNotAppliedAndLagGrows() {
        var machine = Self.machine()
        _ = machine.copyData(Self.keepalive(0x100), now: Self.at(100))
        #expect(machine.lagMillis(now: Self.at(150)) == 0)
        _ = machine.copyData(Self.xLogData(Self.relation), now: Self.at(150))
        _ = Self.feed(&machine, Self.transaction(commit: 0x200, end: 0x230), at: 200)
        machine.disconnected(error: "FATAL 57P01: terminating connection due to administrator command")
        #expect(machine.status.phase == .down)
        #expect(machine.status.errors == 1)
        #expect(machine.status.appliedLSN == nil)
        #expect(machine.lagMillis(now: Self.at(700)) == 600)
        // A late apply result of the old connection changes nothing.
        #expect(machine.applySucceeded() == .none)
        #expect(machine.status.lastCommitLSN == nil)
        // The next connection starts from its own slot and is caught up at its first idle keepalive.
        machine.connecting(node: "127.0.0.1:15433", slot: "tidegate_2")
        machine.slotReady(at: LSN(0x5000))
        machine.streamStarted(now: Self.at(800))
        #expect(machine.status.restarts == 2)
        #expect(machine.lagMillis(now: Self.at(850)) == 750)
        _ = machine.copyData(Self.keepalive(0x5000), now: Self.at(900))
        #expect(machine.lagMillis(now: Self.at(910)) == 0)
        machine.stopped()
        #expect(machine.status.phase == .stopped)
        #expect(machine.statusTick(now: Self.at(1_000)) == .none)
    }
}
