import NIOCore
import PostgresWire
import SQLAnalysis
import Testing

@testable import TidegateServer

/// A server message as the tracker sees it: a frame built with BackendEncoder.
func serverFrame(_ write: (inout ByteBuffer) -> Void) -> PostgresFrame {
    var buffer = ByteBuffer()
    write(&buffer)
    return PostgresFrame(id: buffer.getInteger(at: buffer.readerIndex, as: UInt8.self)!, raw: buffer)
}

enum Server {
    static let parseComplete = serverFrame { BackendEncoder.simple(&$0, .parseComplete) }
    static let bindComplete = serverFrame { BackendEncoder.simple(&$0, .bindComplete) }
    static let closeComplete = serverFrame { BackendEncoder.simple(&$0, .closeComplete) }
    static let noData = serverFrame { BackendEncoder.simple(&$0, .noData) }
    static let portalSuspended = serverFrame { BackendEncoder.simple(&$0, .portalSuspended) }
    static let emptyQuery = serverFrame { BackendEncoder.emptyQueryResponse(&$0) }
    static let rowDescription = serverFrame { BackendEncoder.rowDescription(&$0, columns: [("x", 23)]) }
    static let parameterDescription = serverFrame { BackendEncoder.parameterDescription(&$0, types: [23]) }
    static let dataRow = serverFrame { BackendEncoder.dataRow(&$0, values: ["1"]) }
    static let copyIn = serverFrame {
        $0.writePostgresMessage(id: BackendMessageID.copyInResponse.rawValue) {
            $0.writeInteger(UInt8(0))
            $0.writeInteger(Int16(0))
        }
    }
    static let notice = serverFrame {
        BackendEncoder.noticeResponse(&$0, ErrorFields(severity: "NOTICE", sqlState: "00000", message: "hi"))
    }
    static func complete(_ tag: String) -> PostgresFrame {
        serverFrame { BackendEncoder.commandComplete(&$0, tag: tag) }
    }
    static func ready(_ status: TransactionStatus = .idle) -> PostgresFrame {
        serverFrame { BackendEncoder.readyForQuery(&$0, status: status) }
    }
    static func error(_ sqlState: String = "22012") -> PostgresFrame {
        serverFrame {
            BackendEncoder.errorResponse(&$0, ErrorFields(severity: "ERROR", sqlState: sqlState, message: "boom"))
        }
    }
}

/// Steps a ResponseTracker and renders its events as short strings, so expectations read like a trace.
/// CopyDone events (reported at every ErrorResponse, CommandComplete and ReadyForQuery) are left out
/// unless `copyEvents` is set.
struct TrackerDriver {
    var tracker = ResponseTracker()
    var copyEvents = false
    /// Buffers emitted by the tracker, in order, for byte checks.
    var emitted: [ByteBuffer] = []

    mutating func expect(_ expectation: ResponseTracker.Expectation) -> [String] {
        var events: [ResponseTracker.Event] = []
        self.tracker.expect(expectation, events: &events)
        return self.render(events)
    }

    mutating func receive(_ frame: PostgresFrame) -> (ResponseTracker.Output, [String]) {
        var events: [ResponseTracker.Event] = []
        let output = self.tracker.received(frame, events: &events)
        return (output, self.render(events))
    }

    private mutating func render(_ events: [ResponseTracker.Event]) -> [String] {
        events.compactMap { event in
            switch event {
            case .emit(let buffer):
                self.emitted.append(buffer)
                let id = Character(UnicodeScalar(buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) ?? 0))
                if id == "E",
                    let fields = try? BackendMessage.errorFields(
                        serverFrame({
                            var b = buffer
                            $0.writeBuffer(&b)
                        })
                    )
                {
                    return "emit E \(fields.sqlState ?? "?")"
                }
                return "emit \(id)"
            case .parseSucceeded(let serverName):
                return "parsed \(serverName)"
            case .parseFailed(let serverName, let clientName):
                return "parseFailed \(serverName ?? "-") \(clientName ?? "-")"
            case .effectCompleted(let effect, let tag):
                // The tag is only guaranteed for statements with an effect and for COMMIT/ROLLBACK.
                let shown = effect != .none || tag == "COMMIT" || tag == "ROLLBACK" ? tag : ""
                return "effect \(Self.render(effect))" + (shown.isEmpty ? "" : " \(shown)")
            case .readyForQuery(let status):
                return "ready \(Character(UnicodeScalar(status.rawValue)))"
            case .copyIn:
                return "copyIn"
            case .copyDone:
                return self.copyEvents ? "copyDone" : nil
            case .evictionSkipped:
                return "evictionSkipped"
            }
        }
    }

    static func render(_ effect: SessionEffect) -> String {
        switch effect {
        case .none: return "none"
        case .set(let name, _): return "set(\(name))"
        case .reset(let name): return "reset(\(name))"
        case .resetAll: return "resetAll"
        case .discardAll: return "discardAll"
        case .pin(let reason): return "pin(\(reason))"
        case .deallocate(let name): return "deallocate(\(name ?? "ALL"))"
        }
    }
}

@Suite struct ResponseTrackerTests {
    static func synthesizedParseComplete() -> ResponseTracker.Expectation {
        var buffer = ByteBuffer()
        BackendEncoder.simple(&buffer, .parseComplete)
        return .synthesized(buffer, isError: false)
    }

    static func synthesizedError(_ sqlState: String) -> ResponseTracker.Expectation {
        var buffer = ByteBuffer()
        BackendEncoder.errorResponse(
            &buffer,
            ErrorFields(severity: "ERROR", sqlState: sqlState, message: "prepared statement \"s\" already exists")
        )
        return .synthesized(buffer, isError: true)
    }

    @Test func startsIdle() {
        let tracker = ResponseTracker()
        #expect(tracker.isIdle)
        #expect(!tracker.skippingUntilSync)
    }

    @Test func pipelineWithSwallowedInjectedParse() {
        var driver = TrackerDriver()
        // The client binds a statement this server connection lacks: Tidegate injects a Parse first.
        #expect(driver.expect(.parse(serverName: "srv_1", clientName: nil, swallow: true)).isEmpty)
        #expect(driver.expect(.bind).isEmpty)
        #expect(driver.expect(.describe).isEmpty)
        #expect(driver.expect(.execute(effect: .none)).isEmpty)
        #expect(driver.expect(.sync).isEmpty)
        #expect(driver.tracker.queue.count == 5)
        #expect(!driver.tracker.isIdle)

        var (output, events) = driver.receive(Server.parseComplete)
        #expect(output == .swallow)
        #expect(events == ["parsed srv_1"])
        (output, events) = driver.receive(Server.bindComplete)
        #expect(output == .forward)
        #expect(events.isEmpty)
        (output, events) = driver.receive(Server.rowDescription)
        #expect(output == .forward)
        #expect(driver.tracker.queue.count == 2)
        (output, events) = driver.receive(Server.dataRow)
        #expect(output == .forward)
        #expect(driver.tracker.queue.count == 2)
        (output, events) = driver.receive(Server.complete("SELECT 1"))
        #expect(output == .forward)
        #expect(events == ["effect none"])
        #expect(!driver.tracker.isIdle)
        (output, events) = driver.receive(Server.ready(.idle))
        #expect(output == .forward)
        #expect(events == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func clientParseIsForwardedAndReported() {
        var driver = TrackerDriver()
        _ = driver.expect(.parse(serverName: "srv_2", clientName: "stmt", swallow: false))
        _ = driver.expect(.sync)
        let (output, events) = driver.receive(Server.parseComplete)
        #expect(output == .forward)
        #expect(events == ["parsed srv_2"])
        // An unnamed, unrenamed Parse reports nothing.
        var unnamed = TrackerDriver()
        _ = unnamed.expect(.parse(serverName: nil, clientName: nil, swallow: false))
        let (unnamedOutput, unnamedEvents) = unnamed.receive(Server.parseComplete)
        #expect(unnamedOutput == .forward)
        #expect(unnamedEvents.isEmpty)
        #expect(unnamed.tracker.isIdle)
    }

    @Test func synthesizedParseCompleteWaitsForTheHead() {
        var driver = TrackerDriver()
        _ = driver.expect(.parse(serverName: "srv_a", clientName: "a", swallow: false))
        // Parse "b": the server already has it, Tidegate answers itself, but only after "a" is answered.
        #expect(driver.expect(Self.synthesizedParseComplete()).isEmpty)
        #expect(driver.expect(.bind).isEmpty)
        #expect(driver.expect(.execute(effect: .none)).isEmpty)
        #expect(driver.expect(.sync).isEmpty)
        #expect(driver.emitted.isEmpty)

        let (output, events) = driver.receive(Server.parseComplete)
        #expect(output == .forward)
        // The forwarded ParseComplete for "a" first, then the made-up one for "b".
        #expect(events == ["parsed srv_a", "emit 1"])
        #expect(driver.emitted.map { Array($0.readableBytesView) } == [[0x31, 0, 0, 0, 4]])
        #expect(driver.tracker.queue.count == 3)
        #expect(driver.receive(Server.bindComplete).1.isEmpty)
        #expect(driver.receive(Server.complete("SELECT 2")).1 == ["effect none"])
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func synthesizedAnswerAtTheHeadIsEmittedAtOnce() {
        var driver = TrackerDriver()
        #expect(driver.expect(Self.synthesizedParseComplete()) == ["emit 1"])
        #expect(driver.tracker.isIdle)
        // Several in a row, then one behind a real expectation.
        _ = driver.expect(.bind)
        #expect(driver.expect(Self.synthesizedParseComplete()).isEmpty)
        #expect(driver.expect(Self.synthesizedParseComplete()).isEmpty)
        #expect(driver.receive(Server.bindComplete).1 == ["emit 1", "emit 1"])
        #expect(driver.tracker.isIdle)
    }

    @Test func synthesizedAnswersAfterReadyForQuery() {
        var driver = TrackerDriver()
        _ = driver.expect(.sync)
        _ = driver.expect(Self.synthesizedParseComplete())
        #expect(driver.receive(Server.ready()).1 == ["ready I", "emit 1"])
        #expect(driver.tracker.isIdle)
    }

    @Test func errorMidPipelineSkipsToSync() {
        var driver = TrackerDriver()
        _ = driver.expect(.parse(serverName: "srv_1", clientName: "s1", swallow: false))
        _ = driver.expect(.bind)
        _ = driver.expect(.execute(effect: .none))
        _ = driver.expect(.parse(serverName: "srv_2", clientName: "s2", swallow: false))
        _ = driver.expect(.bind)
        _ = driver.expect(.describe)
        _ = driver.expect(.execute(effect: .set(name: "x", statement: "SET x = 1")))
        _ = driver.expect(.close(swallow: false))
        _ = driver.expect(.sync)

        #expect(driver.receive(Server.parseComplete).1 == ["parsed srv_1"])
        #expect(driver.receive(Server.bindComplete).1.isEmpty)
        // The first Execute fails: PostgreSQL skips everything up to Sync, including the second Parse.
        let (output, events) = driver.receive(Server.error())
        #expect(output == .forward)
        #expect(events == ["parseFailed srv_2 s2"])
        #expect(driver.tracker.queue.count == 1)
        #expect(!driver.tracker.skippingUntilSync)
        #expect(driver.receive(Server.ready(.idle)).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func failedParseReportsItselfAndSkippedParses() {
        var driver = TrackerDriver()
        _ = driver.expect(.parse(serverName: "srv_bad", clientName: "bad", swallow: false))
        _ = driver.expect(.bind)
        _ = driver.expect(.parse(serverName: "srv_later", clientName: nil, swallow: true))
        _ = driver.expect(.sync)
        let (output, events) = driver.receive(Server.error("42601"))
        #expect(output == .forward)
        #expect(events == ["parseFailed srv_bad bad", "parseFailed srv_later -"])
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func errorBeforeSyncIsSentSkipsLaterMessagesUntilSync() {
        var driver = TrackerDriver()
        _ = driver.expect(.parse(serverName: "srv_1", clientName: "s1", swallow: false))
        _ = driver.expect(.bind)
        _ = driver.expect(.execute(effect: .none))
        #expect(driver.receive(Server.error("42P01")).1 == ["parseFailed srv_1 s1"])
        #expect(driver.tracker.skippingUntilSync)
        #expect(driver.tracker.isIdle)
        // What the client sends next is skipped by the server, so nothing is expected for it.
        #expect(driver.expect(.bind).isEmpty)
        #expect(driver.expect(.describe).isEmpty)
        #expect(driver.expect(.execute(effect: .pin(reason: "x"))).isEmpty)
        // An eviction Close the server skips leaves the statement on the server: reported.
        #expect(driver.expect(.close(swallow: true)) == ["evictionSkipped"])
        #expect(
            driver.expect(.parse(serverName: "srv_3", clientName: "s3", swallow: false)) == ["parseFailed srv_3 s3"]
        )
        #expect(driver.expect(Self.synthesizedParseComplete()).isEmpty)
        #expect(driver.emitted.isEmpty)
        #expect(driver.tracker.isIdle)
        // Sync ends the skipping.
        #expect(driver.expect(.sync).isEmpty)
        #expect(!driver.tracker.skippingUntilSync)
        #expect(driver.tracker.queue.count == 1)
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
        // Normal service afterwards.
        _ = driver.expect(.parse(serverName: "srv_4", clientName: "s4", swallow: false))
        #expect(driver.receive(Server.parseComplete).1 == ["parsed srv_4"])
    }

    @Test func simpleQueryAppliesOneEffectPerCommandComplete() {
        var driver = TrackerDriver()
        let effects = SessionEffectClassifier.effects(of: "SET a = 1; SELECT 1; RESET b; SET c = 3", keepNone: true)
        #expect(effects.count == 4)
        _ = driver.expect(.simpleQuery(effects: effects, next: 0))
        #expect(driver.receive(Server.complete("SET")).1 == ["effect set(a) SET"])
        #expect(driver.receive(Server.rowDescription).0 == .forward)
        #expect(driver.receive(Server.dataRow).0 == .forward)
        #expect(driver.receive(Server.complete("SELECT 1")).1 == ["effect none"])
        #expect(driver.receive(Server.complete("RESET")).1 == ["effect reset(b) RESET"])
        #expect(driver.receive(Server.notice).1.isEmpty)
        #expect(driver.receive(Server.complete("SET")).1 == ["effect set(c) SET"])
        #expect(!driver.tracker.isIdle)
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func transactionEndTagsAreReadForStatementsWithoutEffect() {
        var driver = TrackerDriver()
        _ = driver.expect(
            .simpleQuery(
                effects: SessionEffectClassifier.effects(of: "BEGIN; SET a = 1; COMMIT", keepNone: true),
                next: 0
            )
        )
        // BEGIN has no effect and is not a transaction end: its tag is not read.
        #expect(driver.receive(Server.complete("BEGIN")).1 == ["effect none"])
        #expect(driver.receive(Server.complete("SET")).1 == ["effect set(a) SET"])
        #expect(driver.receive(Server.complete("COMMIT")).1 == ["effect none COMMIT"])
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
        _ = driver.expect(.simpleQuery(effects: [.none], next: 0))
        #expect(driver.receive(Server.complete("ROLLBACK")).1 == ["effect none ROLLBACK"])
        _ = driver.receive(Server.ready())
        // Extended protocol too.
        _ = driver.expect(.execute(effect: .none))
        _ = driver.expect(.sync)
        #expect(driver.receive(Server.complete("COMMIT")).1 == ["effect none COMMIT"])
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func hiddenStatementsAreSwallowed() {
        var driver = TrackerDriver()
        // Tidegate prepended a statement of its own (hidden) to the client's one.
        _ = driver.expect(
            .simpleQuery(
                effects: [.set(name: "a", statement: "SET a = 1"), .none],
                next: 0,
                hidden: [true, false]
            )
        )
        #expect(driver.receive(Server.complete("SET")) == (.swallow, ["effect set(a) SET"]))
        #expect(driver.receive(Server.complete("SELECT 1")) == (.forward, ["effect none"]))
        #expect(driver.receive(Server.ready()) == (.forward, ["ready I"]))
        #expect(driver.tracker.isIdle)
    }

    @Test func simpleQueryErrorDropsTheRemainingEffects() {
        var driver = TrackerDriver()
        let effects = SessionEffectClassifier.effects(of: "SET a = 1; SELECT 1/0; SET b = 2", keepNone: true)
        _ = driver.expect(.simpleQuery(effects: effects, next: 0))
        #expect(driver.receive(Server.complete("SET")).1 == ["effect set(a) SET"])
        let (output, events) = driver.receive(Server.error())
        #expect(output == .forward)
        #expect(events.isEmpty)
        #expect(!driver.tracker.skippingUntilSync)
        #expect(driver.receive(Server.ready(.idle)).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func moreCommandCompletesThanStatementsReportNone() {
        var driver = TrackerDriver()
        _ = driver.expect(.simpleQuery(effects: [.resetAll], next: 0))
        #expect(driver.receive(Server.complete("RESET")).1 == ["effect resetAll RESET"])
        #expect(driver.receive(Server.complete("SELECT 1")).1 == ["effect none"])
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
    }

    @Test func emptyQueryResponse() {
        var driver = TrackerDriver()
        _ = driver.expect(.simpleQuery(effects: [], next: 0))
        #expect(driver.receive(Server.emptyQuery) == (.forward, []))
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func simpleQueriesQueueBehindEachOther() {
        var driver = TrackerDriver()
        _ = driver.expect(.simpleQuery(effects: [.set(name: "a", statement: "SET a = 1")], next: 0))
        _ = driver.expect(.simpleQuery(effects: [.set(name: "b", statement: "SET b = 1")], next: 0))
        #expect(driver.receive(Server.complete("SET")).1 == ["effect set(a) SET"])
        #expect(driver.receive(Server.ready(.inTransaction)).1 == ["ready T"])
        #expect(!driver.tracker.isIdle)
        #expect(driver.receive(Server.complete("SET")).1 == ["effect set(b) SET"])
        #expect(driver.receive(Server.ready(.failed)).1 == ["ready E"])
        #expect(driver.tracker.isIdle)
    }

    @Test func executeEffectIsReportedOnlyOnCommandComplete() {
        var driver = TrackerDriver()
        let effect = SessionEffect.set(name: "work_mem", statement: "SET work_mem = '1MB'")
        _ = driver.expect(.bind)
        _ = driver.expect(.execute(effect: effect))
        _ = driver.expect(.execute(effect: effect))
        _ = driver.expect(.sync)
        _ = driver.receive(Server.bindComplete)
        // A suspended portal completes the Execute without its effect.
        #expect(driver.receive(Server.portalSuspended).1.isEmpty)
        #expect(driver.receive(Server.complete("SET")).1 == ["effect set(work_mem) SET"])
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func synthesizedErrorEmitsAndSkipsToSync() {
        var driver = TrackerDriver()
        _ = driver.expect(.parse(serverName: "srv_s", clientName: "s", swallow: false))
        // The client parses "s" again: Tidegate answers 42P05 itself (and sends nothing more until Sync).
        #expect(driver.expect(Self.synthesizedError("42P05")).isEmpty)
        _ = driver.expect(.sync)
        let (output, events) = driver.receive(Server.parseComplete)
        #expect(output == .forward)
        #expect(events == ["parsed srv_s", "emit E 42P05"])
        #expect(!driver.tracker.skippingUntilSync)
        #expect(driver.tracker.queue.count == 1)
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func synthesizedErrorAtTheHeadDropsQueuedWorkAndSkips() {
        var driver = TrackerDriver()
        #expect(driver.expect(Self.synthesizedError("42P05")) == ["emit E 42P05"])
        #expect(driver.tracker.skippingUntilSync)
        #expect(driver.expect(.bind).isEmpty)
        #expect(driver.expect(.execute(effect: .none)).isEmpty)
        #expect(driver.tracker.isIdle)
        _ = driver.expect(.sync)
        #expect(!driver.tracker.skippingUntilSync)
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func closeCompleteSwallowedOrForwarded() {
        var driver = TrackerDriver()
        _ = driver.expect(.close(swallow: true))
        _ = driver.expect(.close(swallow: false))
        _ = driver.expect(.sync)
        #expect(driver.receive(Server.closeComplete).0 == .swallow)
        #expect(driver.receive(Server.closeComplete).0 == .forward)
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
        #expect(driver.tracker.isIdle)
    }

    @Test func describeStatementEndsAtRowDescriptionOrNoData() {
        var driver = TrackerDriver()
        _ = driver.expect(.describe)
        _ = driver.expect(.describe)
        _ = driver.expect(.sync)
        #expect(driver.receive(Server.parameterDescription).0 == .forward)
        #expect(driver.tracker.queue.count == 3)
        #expect(driver.receive(Server.rowDescription).0 == .forward)
        #expect(driver.tracker.queue.count == 2)
        #expect(driver.receive(Server.noData).0 == .forward)
        #expect(driver.tracker.queue.count == 1)
        #expect(driver.receive(Server.ready()).1 == ["ready I"])
    }

    @Test func readyForQueryEventsWithoutExpectations() {
        var driver = TrackerDriver()
        #expect(driver.receive(Server.ready(.inTransaction)) == (.forward, ["ready T"]))
        #expect(driver.tracker.isIdle)
        // Unexpected answers are forwarded untouched.
        #expect(driver.receive(Server.parseComplete) == (.forward, []))
        #expect(driver.receive(Server.closeComplete) == (.forward, []))
        #expect(driver.receive(Server.error()) == (.forward, []))
        #expect(driver.tracker.isIdle)
    }

    @Test func copyEvents() {
        var driver = TrackerDriver(copyEvents: true)
        _ = driver.expect(.simpleQuery(effects: [.none], next: 0))
        #expect(driver.receive(Server.copyIn) == (.forward, ["copyIn"]))
        #expect(driver.receive(Server.complete("COPY 3")) == (.forward, ["copyDone", "effect none"]))
        #expect(driver.receive(Server.ready()) == (.forward, ["copyDone", "ready I"]))
        #expect(driver.tracker.isIdle)
        _ = driver.expect(.simpleQuery(effects: [.none], next: 0))
        _ = driver.receive(Server.copyIn)
        #expect(driver.receive(Server.error("22P02")).1 == ["copyDone"])
    }

    @Test func resetForgetsEverything() {
        var driver = TrackerDriver()
        _ = driver.expect(.parse(serverName: "srv", clientName: "c", swallow: false))
        _ = driver.expect(.execute(effect: .none))
        _ = driver.receive(Server.error())
        #expect(driver.tracker.skippingUntilSync)
        driver.tracker.reset()
        #expect(driver.tracker.isIdle)
        #expect(!driver.tracker.skippingUntilSync)
        #expect(driver.expect(.parse(serverName: "srv", clientName: "c", swallow: false)).isEmpty)
        #expect(!driver.tracker.isIdle)
    }
}

@Suite struct ResponseTrackerNoticeTests {
    /// A warning from a Parse Tidegate injected (re-preparing a statement the client prepared on another
    /// server connection) is swallowed; one from the client's own Parse is forwarded.
    @Test func noticesOfInjectedParsesAreSwallowed() {
        var driver = TrackerDriver()
        _ = driver.expect(.parse(serverName: "srv_1", clientName: nil, swallow: true))
        _ = driver.expect(.bind)
        #expect(driver.receive(Server.notice).0 == .swallow)
        #expect(driver.receive(Server.parseComplete).0 == .swallow)
        #expect(driver.receive(Server.notice).0 == .forward)
        #expect(driver.receive(Server.bindComplete).0 == .forward)
        _ = driver.expect(.parse(serverName: "srv_2", clientName: "s2", swallow: false))
        #expect(driver.receive(Server.notice).0 == .forward)
    }
}
