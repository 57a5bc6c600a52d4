import DequeModule
import NIOCore
import PostgresWire
import SQLAnalysis

/// Tracks what the server owes the client for every message sent to it, in order, so that Tidegate can
/// swallow the answers to messages it injected (a Parse for a statement the connection lacked),
/// insert answers for messages it did not forward (a Parse of a statement the connection already has),
/// apply session effects when their statement completes, and know when a server connection is free.
/// Pure: no I/O.
struct ResponseTracker {
    enum Expectation {
        /// A simple Query or FunctionCall: answered up to ReadyForQuery. Effects are applied one per
        /// CommandComplete.
        case simpleQuery(effects: [SessionEffect], next: Int, hidden: [Bool] = [])
        /// ParseComplete. `swallow` for a Parse Tidegate injected; `serverName` is what the server
        /// prepares; `clientName` the client's name for it (nil for unnamed or injected).
        case parse(serverName: String?, clientName: String?, swallow: Bool)
        case bind
        case describe
        case execute(effect: SessionEffect)
        case close(swallow: Bool)
        case sync
        /// An answer Tidegate makes up; sent when it reaches the head of the queue.
        case synthesized(ByteBuffer, isError: Bool)
    }

    enum Output {
        case forward
        case swallow
    }

    /// Things the session must act on, reported while a server message is handled.
    enum Event {
        case emit(ByteBuffer)
        case parseSucceeded(serverName: String)
        /// A Parse the server skipped or refused: it does not have `serverName`; the client does not have
        /// `clientName`.
        case parseFailed(serverName: String?, clientName: String?)
        case effectCompleted(SessionEffect, tag: String)
        case readyForQuery(TransactionStatus)
        case copyIn
        case copyDone
        /// A Close Tidegate injected to evict a statement was skipped: the server still has a statement
        /// Tidegate believes gone, so the connection must not be reused.
        case evictionSkipped
    }

    private(set) var queue = Deque<Expectation>()
    /// The server reported an error and discards extended-protocol messages until Sync.
    private(set) var skippingUntilSync = false

    var isIdle: Bool { self.queue.isEmpty }

    /// Records that a message was sent (or answered locally). Synthesized answers at the head are
    /// returned at once for the caller to send.
    mutating func expect(_ expectation: Expectation, events: inout [Event]) {
        if self.skippingUntilSync {
            // PostgreSQL ignores every message but Sync after an extended-protocol error (a Query too).
            switch expectation {
            case .sync:
                self.skippingUntilSync = false
            case .parse(let serverName, let clientName, _):
                events.append(.parseFailed(serverName: serverName, clientName: clientName))
                return
            case .close(let swallow):
                if swallow { events.append(.evictionSkipped) }
                return
            case .bind, .describe, .execute, .synthesized, .simpleQuery:
                return
            }
        }
        self.queue.append(expectation)
        self.drainSynthesized(events: &events)
    }

    private mutating func drainSynthesized(events: inout [Event]) {
        while case .synthesized(let buffer, let isError) = self.queue.first {
            self.queue.removeFirst()
            events.append(.emit(buffer))
            if isError { self.skipToSync(events: &events) }
        }
    }

    /// After an error in the extended protocol: drop what the server will skip.
    private mutating func skipToSync(events: inout [Event]) {
        while let head = self.queue.first {
            switch head {
            case .sync:
                return
            case .parse(let serverName, let clientName, _):
                events.append(.parseFailed(serverName: serverName, clientName: clientName))
            case .close(let swallow):
                if swallow { events.append(.evictionSkipped) }
            case .bind, .describe, .execute, .synthesized, .simpleQuery:
                break
            }
            self.queue.removeFirst()
        }
        self.skippingUntilSync = true
    }

    /// Decides what to do with one server message.
    mutating func received(_ frame: PostgresFrame, events: inout [Event]) -> Output {
        guard let id = frame.backendID else { return .forward }
        switch id {
        case .dataRow:
            return self.inHiddenStep ? .swallow : .forward
        case .noticeResponse:
            // A warning raised while parsing a statement Tidegate re-prepared (the client prepared it on
            // another connection) is not the client's: directly, that statement is not parsed again.
            if case .parse(_, _, swallow: true) = self.queue.first { return .swallow }
            return .forward
        case .parameterStatus, .notificationResponse, .copyData, .functionCallResponse, .parameterDescription:
            return .forward
        case .copyInResponse, .copyBothResponse:
            events.append(.copyIn)
            return .forward
        case .copyOutResponse:
            return .forward
        case .copyDone:
            return .forward
        case .errorResponse:
            events.append(.copyDone)
            guard let head = self.queue.first else { return .forward }
            switch head {
            case .simpleQuery:
                // Later statements of the string are skipped; so are their effects.
                self.queue[self.queue.startIndex] = .simpleQuery(effects: [], next: 0, hidden: [])
                return .forward
            case .parse(let serverName, let clientName, _):
                self.queue.removeFirst()
                events.append(.parseFailed(serverName: serverName, clientName: clientName))
                self.skipToSync(events: &events)
                return .forward
            case .bind, .describe, .execute, .close, .synthesized, .sync:
                self.skipToSync(events: &events)
                return .forward
            }
        case .parseComplete:
            guard case .parse(let serverName, _, let swallow) = self.queue.first else { return .forward }
            self.queue.removeFirst()
            if let serverName { events.append(.parseSucceeded(serverName: serverName)) }
            self.drainSynthesized(events: &events)
            return swallow ? .swallow : .forward
        case .bindComplete:
            if case .bind = self.queue.first { self.queue.removeFirst() }
            self.drainSynthesized(events: &events)
            return .forward
        case .closeComplete:
            guard case .close(let swallow) = self.queue.first else { return .forward }
            self.queue.removeFirst()
            self.drainSynthesized(events: &events)
            return swallow ? .swallow : .forward
        case .rowDescription, .noData:
            if self.inHiddenStep { return .swallow }
            if case .describe = self.queue.first {
                self.queue.removeFirst()
                self.drainSynthesized(events: &events)
            }
            return .forward
        case .commandComplete, .emptyQueryResponse, .portalSuspended:
            events.append(.copyDone)
            switch self.queue.first {
            case .execute(let effect):
                self.queue.removeFirst()
                if id == .commandComplete { events.append(.effectCompleted(effect, tag: Self.tag(frame, effect))) }
                self.drainSynthesized(events: &events)
            case .simpleQuery(let effects, let next, let hidden):
                if id == .commandComplete || id == .emptyQueryResponse {
                    let effect = next < effects.count ? effects[next] : .none
                    if id == .commandComplete { events.append(.effectCompleted(effect, tag: Self.tag(frame, effect))) }
                    self.queue[self.queue.startIndex] = .simpleQuery(effects: effects, next: next + 1, hidden: hidden)
                    if next < hidden.count && hidden[next] { return .swallow }
                }
            default:
                break
            }
            return .forward
        case .readyForQuery:
            events.append(.copyDone)
            switch self.queue.first {
            case .sync, .simpleQuery:
                self.queue.removeFirst()
            default:
                break
            }
            self.skippingUntilSync = false
            let status = (try? BackendMessage.readyForQuery(frame)) ?? .idle
            events.append(.readyForQuery(status))
            self.drainSynthesized(events: &events)
            return .forward
        case .authentication, .backendKeyData, .negotiateProtocolVersion:
            return .forward
        }
    }

    /// The command tag, read only when it can matter: a statement with an effect, or COMMIT/ROLLBACK
    /// (which decide the fate of settings made inside the transaction).
    static func tag(_ frame: PostgresFrame, _ effect: SessionEffect) -> String {
        let bodyLength = frame.raw.readableBytes - 5
        guard effect != .none || bodyLength == 7 || bodyLength == 9 else { return "" }
        return (try? BackendMessage.commandTag(frame)) ?? ""
    }

    /// Whether the simple query at the head is running a statement Tidegate added (its rows and
    /// CommandComplete are not the client's).
    private var inHiddenStep: Bool {
        guard case .simpleQuery(_, let next, let hidden) = self.queue.first else { return false }
        return next < hidden.count && hidden[next]
    }

    /// Clears all expectations (the server connection went away).
    mutating func reset() {
        self.queue.removeAll()
        self.skippingUntilSync = false
    }
}
