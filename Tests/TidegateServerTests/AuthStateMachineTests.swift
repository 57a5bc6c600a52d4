import NIOCore
import PostgresWire
import Testing

@testable import TidegateServer

/// One typed frame from bytes a state machine asked to send (exactly one message).
func onlyFrame(_ buffer: ByteBuffer) throws -> PostgresFrame {
    var decoder = PostgresFrameDecoder(maxMessageBytes: 1 << 20)
    var input = buffer
    let decoded = try decoder.decode(buffer: &input)
    let frame = try #require(decoded)
    #expect(input.readableBytes == 0)
    return frame
}

func clientFrame(_ write: (inout ByteBuffer) -> Void) -> PostgresFrame {
    var buffer = ByteBuffer()
    write(&buffer)
    return PostgresFrame(id: buffer.getInteger(at: buffer.readerIndex, as: UInt8.self)!, raw: buffer)
}

@Suite struct ClientAuthStateMachineTests {
    typealias Machine = ClientAuthStateMachine
    typealias User = TidegateConfig.User

    static func user(_ name: String, _ password: String) -> User {
        User(name: name, password: password, backendPassword: nil, admin: false)
    }

    enum Outcome {
        case authenticated
        case failed(ErrorFields)
    }

    /// Plays a complete SCRAM exchange with PostgresWire's client, returning how it ended and the
    /// server-first message (for shape checks).
    static func scram(
        _ machine: inout Machine,
        password: String
    ) throws -> (outcome: Outcome, serverFirst: String) {
        guard case .send(let offer) = machine.start() else {
            Issue.record("expected AuthenticationSASL")
            return (.failed(ErrorFields(fields: [])), "")
        }
        #expect(try BackendMessage.authentication(try onlyFrame(offer)) == .sasl(mechanisms: ["SCRAM-SHA-256"]))
        var client = SCRAMClientExchange(password: password)
        let first = client.clientFirstMessage()
        let initial = clientFrame { FrontendEncoder.saslInitialResponse(&$0, mechanism: "SCRAM-SHA-256", data: first) }
        guard case .send(let continueBuffer) = machine.received(initial) else {
            Issue.record("expected AuthenticationSASLContinue")
            return (.failed(ErrorFields(fields: [])), "")
        }
        guard case .saslContinue(let serverFirst) = try BackendMessage.authentication(try onlyFrame(continueBuffer))
        else {
            Issue.record("expected AuthenticationSASLContinue")
            return (.failed(ErrorFields(fields: [])), "")
        }
        let clientFinal = try client.receiveServerFirst(serverFirst)
        let response = clientFrame { FrontendEncoder.saslResponse(&$0, data: clientFinal) }
        let serverFirstText = String(decoding: serverFirst, as: UTF8.self)
        switch machine.received(response) {
        case .send(let finalBuffer):
            guard case .saslFinal(let serverFinal) = try BackendMessage.authentication(try onlyFrame(finalBuffer))
            else {
                Issue.record("expected AuthenticationSASLFinal")
                return (.failed(ErrorFields(fields: [])), serverFirstText)
            }
            // The client checks the server's signature: Tidegate must know the verifier.
            try client.receiveServerFinal(serverFinal)
            #expect(client.state == .succeeded)
            #expect(machine.isAuthenticated)
            return (.authenticated, serverFirstText)
        case .fail(let fields):
            #expect(!machine.isAuthenticated)
            return (.failed(fields), serverFirstText)
        case .authenticated:
            Issue.record("SCRAM must end with AuthenticationSASLFinal, not a bare success")
            return (.authenticated, serverFirstText)
        }
    }

    static func expectPasswordFailure(_ outcome: Outcome, user: String) {
        guard case .failed(let fields) = outcome else {
            Issue.record("expected a failure, got \(outcome)")
            return
        }
        #expect(fields.sqlState == "28P01")
        #expect(fields["S"] == "FATAL")
        #expect(fields.severity == "FATAL")
        #expect(fields.message == "password authentication failed for user \"\(user)\"")
    }

    /// "r=…,s=…,i=…" → (s length in base64, i)
    static func shape(_ serverFirst: String) -> (saltLength: Int, iterations: String)? {
        let parts = serverFirst.split(separator: ",")
        guard parts.count == 3, parts[1].hasPrefix("s="), parts[2].hasPrefix("i=") else { return nil }
        return (parts[1].count - 2, String(parts[2].dropFirst(2)))
    }

    @Test func scramSuccess() throws {
        var machine = Machine(userName: "alice", user: Self.user("alice", "s3cret"), method: .scramSHA256)
        let (outcome, serverFirst) = try Self.scram(&machine, password: "s3cret")
        guard case .authenticated = outcome else {
            Issue.record("expected success, got \(outcome)")
            return
        }
        #expect(Self.shape(serverFirst)?.iterations == "4096")
    }

    @Test func scramWrongPassword() throws {
        var machine = Machine(userName: "alice", user: Self.user("alice", "s3cret"), method: .scramSHA256)
        let (outcome, _) = try Self.scram(&machine, password: "wrong")
        Self.expectPasswordFailure(outcome, user: "alice")
        // The machine is finished: another message is a protocol violation.
        guard case .fail(let fields) = machine.received(clientFrame { FrontendEncoder.password(&$0, "x") }) else {
            Issue.record("expected a failure")
            return
        }
        #expect(fields.sqlState == "08P01")
    }

    @Test func unknownUserFailsLikeAWrongPassword() throws {
        var known = Machine(userName: "alice", user: Self.user("alice", "s3cret"), method: .scramSHA256)
        let (_, knownFirst) = try Self.scram(&known, password: "guess")
        var unknown = Machine(userName: "ghost", user: nil, method: .scramSHA256)
        let (outcome, unknownFirst) = try Self.scram(&unknown, password: "guess")
        Self.expectPasswordFailure(outcome, user: "ghost")
        // Same exchange shape: salt length and iteration count do not reveal the unknown user.
        let knownShape = try #require(Self.shape(knownFirst))
        let unknownShape = try #require(Self.shape(unknownFirst))
        #expect(knownShape.saltLength == unknownShape.saltLength)
        #expect(knownShape.iterations == unknownShape.iterations)
    }

    @Test func userWithoutPasswordCannotLogIn() throws {
        var machine = Machine(userName: "nopw", user: Self.user("nopw", ""), method: .scramSHA256)
        let (outcome, _) = try Self.scram(&machine, password: "")
        Self.expectPasswordFailure(outcome, user: "nopw")
    }

    @Test func scramVerifierAsStoredPassword() throws {
        let verifier = SCRAMVerifier.derive(password: "market-data", iterations: 4096).stringValue
        #expect(verifier.hasPrefix("SCRAM-SHA-256$4096:"))
        var good = Machine(userName: "bob", user: Self.user("bob", verifier), method: .scramSHA256)
        guard case .authenticated = try Self.scram(&good, password: "market-data").outcome else {
            Issue.record("the right password must match the stored verifier")
            return
        }
        var bad = Machine(userName: "bob", user: Self.user("bob", verifier), method: .scramSHA256)
        Self.expectPasswordFailure(try Self.scram(&bad, password: verifier).outcome, user: "bob")
    }

    @Test func scramVerifierIsUsedEvenWhenMD5IsConfigured() throws {
        let verifier = SCRAMVerifier.derive(password: "pw", iterations: 4096).stringValue
        var machine = Machine(userName: "carol", user: Self.user("carol", verifier), method: .md5)
        guard case .authenticated = try Self.scram(&machine, password: "pw").outcome else {
            Issue.record("a SCRAM verifier can only be checked with SCRAM")
            return
        }
    }

    static func md5Salt(_ action: Machine.Action) throws -> [UInt8] {
        guard case .send(let buffer) = action,
            case .md5Password(let salt) = try BackendMessage.authentication(try onlyFrame(buffer))
        else {
            Issue.record("expected AuthenticationMD5Password")
            return []
        }
        return salt
    }

    @Test func md5Success() throws {
        var machine = Machine(userName: "dave", user: Self.user("dave", "pw"), method: .md5)
        let salt = try Self.md5Salt(machine.start())
        #expect(salt.count == 4)
        let response = clientFrame {
            FrontendEncoder.password(&$0, MD5Password.response(user: "dave", password: "pw", salt: salt))
        }
        guard case .authenticated = machine.received(response) else {
            Issue.record("expected success")
            return
        }
        #expect(machine.isAuthenticated)
    }

    @Test func md5WithStoredHash() throws {
        var machine = Machine(
            userName: "dave",
            user: Self.user("dave", MD5Password.hash(user: "dave", password: "pw")),
            method: .md5
        )
        let salt = try Self.md5Salt(machine.start())
        let response = clientFrame {
            FrontendEncoder.password(&$0, MD5Password.response(user: "dave", password: "pw", salt: salt))
        }
        guard case .authenticated = machine.received(response) else {
            Issue.record("expected success")
            return
        }
    }

    @Test func md5WrongPasswordAndUnknownUser() throws {
        var machine = Machine(userName: "dave", user: Self.user("dave", "pw"), method: .md5)
        let salt = try Self.md5Salt(machine.start())
        let wrong = clientFrame {
            FrontendEncoder.password(&$0, MD5Password.response(user: "dave", password: "nope", salt: salt))
        }
        guard case .fail(let fields) = machine.received(wrong) else {
            Issue.record("expected failure")
            return
        }
        Self.expectPasswordFailure(.failed(fields), user: "dave")

        var unknown = Machine(userName: "ghost", user: nil, method: .md5)
        let ghostSalt = try Self.md5Salt(unknown.start())
        let guess = clientFrame {
            FrontendEncoder.password(&$0, MD5Password.response(user: "ghost", password: "", salt: ghostSalt))
        }
        guard case .fail(let ghostFields) = unknown.received(guess) else {
            Issue.record("expected failure")
            return
        }
        Self.expectPasswordFailure(.failed(ghostFields), user: "ghost")
    }

    @Test func trust() {
        var machine = Machine(userName: "anyone", user: nil, method: .trust)
        guard case .authenticated = machine.start() else {
            Issue.record("trust authenticates at once")
            return
        }
        #expect(machine.isAuthenticated)
    }

    @Test func protocolViolations() {
        var machine = Machine(userName: "alice", user: Self.user("alice", "pw"), method: .scramSHA256)
        _ = machine.start()
        guard case .fail(let fields) = machine.received(clientFrame { FrontendEncoder.query(&$0, "SELECT 1") }) else {
            Issue.record("a Query during authentication must fail")
            return
        }
        #expect(fields.sqlState == "08P01")
        #expect(fields["S"] == "FATAL")

        var plus = Machine(userName: "alice", user: Self.user("alice", "pw"), method: .scramSHA256)
        _ = plus.start()
        let channelBinding = clientFrame {
            FrontendEncoder.saslInitialResponse(
                &$0,
                mechanism: "SCRAM-SHA-256-PLUS",
                data: Array("p=tls-server-end-point,,n=,r=abc".utf8)
            )
        }
        guard case .fail(let plusFields) = plus.received(channelBinding) else {
            Issue.record("an unoffered mechanism must fail")
            return
        }
        #expect(plusFields.sqlState == "28000")

        var garbage = Machine(userName: "alice", user: Self.user("alice", "pw"), method: .scramSHA256)
        _ = garbage.start()
        let bad = clientFrame {
            FrontendEncoder.saslInitialResponse(&$0, mechanism: "SCRAM-SHA-256", data: Array("hello".utf8))
        }
        guard case .fail(let badFields) = garbage.received(bad) else {
            Issue.record("a malformed client-first must fail")
            return
        }
        #expect(badFields.sqlState == "08P01")

        var early = Machine(userName: "alice", user: Self.user("alice", "pw"), method: .scramSHA256)
        guard case .fail(let earlyFields) = early.received(clientFrame { FrontendEncoder.password(&$0, "pw") }) else {
            Issue.record("a password before the request must fail")
            return
        }
        #expect(earlyFields.sqlState == "08P01")
    }
}

struct UnexpectedAction: Error {}

@Suite struct BackendStartupStateMachineTests {
    typealias Machine = BackendStartupStateMachine

    static func server(_ write: (inout ByteBuffer) -> Void) -> PostgresFrame { clientFrame(write) }

    /// The frontend message a `.send` action carries.
    static func sent(_ action: Machine.Action) throws -> PostgresFrame {
        guard case .send(let buffer) = action else {
            Issue.record("expected .send, got \(action)")
            throw UnexpectedAction()
        }
        let frame = try onlyFrame(buffer)
        #expect(frame.frontendID == .password)
        return frame
    }

    static func finishLogin(_ machine: inout Machine) {
        #expect(machine.received(Self.server { BackendEncoder.authenticationOK(&$0) }) == .wait)
        #expect(
            machine.received(Self.server { BackendEncoder.parameterStatus(&$0, name: "server_version", value: "15.8") })
                == .wait
        )
        #expect(
            machine.received(Self.server { BackendEncoder.parameterStatus(&$0, name: "TimeZone", value: "UTC") })
                == .wait
        )
        #expect(
            machine.received(Self.server { BackendEncoder.backendKeyData(&$0, processID: 777, secretKey: -99) })
                == .wait
        )
        #expect(machine.received(Self.server { BackendEncoder.readyForQuery(&$0, status: .idle) }) == .ready)
        #expect(machine.parameters == ["server_version": "15.8", "TimeZone": "UTC"])
        #expect(machine.backendKey.processID == 777)
        #expect(machine.backendKey.secretKey == -99)
        guard case .ready = machine.state else {
            Issue.record("expected .ready, got \(machine.state)")
            return
        }
    }

    @Test func scramLogin() throws {
        var machine = Machine(user: "tidegate", password: "pw")
        var server = SCRAMServerExchange(verifier: SCRAMVerifier.derive(password: "pw", iterations: 64))

        let initial = try Self.sent(
            machine.received(
                Self.server {
                    BackendEncoder.authenticationSASL(&$0, mechanisms: ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
                }
            )
        )
        var body = initial.body
        #expect(body.readNullTerminatedString() == "SCRAM-SHA-256")
        let read = body.readInteger(as: Int32.self)
        let length = try #require(read)
        #expect(Int(length) == body.readableBytes)
        let serverFirst = try server.receiveClientFirst(body.readBytes(length: body.readableBytes) ?? [])

        let response = try Self.sent(
            machine.received(Self.server { BackendEncoder.authenticationSASLContinue(&$0, data: serverFirst) })
        )
        let serverFinal = try server.receiveClientFinal(Array(response.body.readableBytesView))
        #expect(server.state == .succeeded)

        #expect(
            machine.received(Self.server { BackendEncoder.authenticationSASLFinal(&$0, data: serverFinal) }) == .wait
        )
        Self.finishLogin(&machine)
    }

    @Test func scramServerWithWrongSignatureIsRejected() throws {
        var machine = Machine(user: "tidegate", password: "pw")
        // A server that does not know the password (another verifier): its signature does not match.
        var server = SCRAMServerExchange(verifier: SCRAMVerifier.derive(password: "other", iterations: 64))
        let initial = try Self.sent(
            machine.received(Self.server { BackendEncoder.authenticationSASL(&$0, mechanisms: ["SCRAM-SHA-256"]) })
        )
        var body = initial.body
        _ = body.readNullTerminatedString()
        _ = body.readInteger(as: Int32.self)
        let serverFirst = try server.receiveClientFirst(body.readBytes(length: body.readableBytes) ?? [])
        _ = try Self.sent(
            machine.received(Self.server { BackendEncoder.authenticationSASLContinue(&$0, data: serverFirst) })
        )
        let forged = Array("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".utf8)
        guard
            case .fail(let fields) = machine.received(
                Self.server { BackendEncoder.authenticationSASLFinal(&$0, data: forged) }
            )
        else {
            Issue.record("a wrong server signature must fail the login")
            return
        }
        #expect(fields.sqlState == "28000")
        #expect(fields["S"] == "FATAL")
    }

    @Test func md5Login() throws {
        var machine = Machine(user: "tidegate", password: "pw")
        let salt: [UInt8] = [9, 8, 7, 6]
        let password = try Self.sent(
            machine.received(Self.server { BackendEncoder.authenticationMD5(&$0, salt: salt) })
        )
        var body = password.body
        #expect(body.readNullTerminatedString() == MD5Password.response(user: "tidegate", password: "pw", salt: salt))
        #expect(body.readableBytes == 0)
        Self.finishLogin(&machine)
    }

    @Test func cleartextLogin() throws {
        var machine = Machine(user: "tidegate", password: "plain pw")
        let password = try Self.sent(machine.received(Self.server { BackendEncoder.authenticationCleartext(&$0) }))
        #expect(Array(password.body.readableBytesView) == Array("plain pw\0".utf8))
        Self.finishLogin(&machine)
    }

    @Test func trustedServer() {
        var machine = Machine(user: "tidegate", password: nil)
        Self.finishLogin(&machine)
    }

    @Test func noticesAndNegotiationAreIgnored() {
        var machine = Machine(user: "tidegate", password: nil)
        let notice = Self.server {
            BackendEncoder.noticeResponse(&$0, ErrorFields(severity: "NOTICE", sqlState: "00000", message: "hello"))
        }
        #expect(machine.received(notice) == .wait)
        #expect(
            machine.received(
                Self.server { BackendEncoder.negotiateProtocolVersion(&$0, newestVersion: 0, unrecognized: []) }
            ) == .wait
        )
        Self.finishLogin(&machine)
    }

    @Test func serverErrorFailsWithFATAL() {
        var machine = Machine(user: "tidegate", password: "pw")
        let error = Self.server {
            BackendEncoder.errorResponse(
                &$0,
                ErrorFields(severity: "ERROR", sqlState: "3D000", message: "database \"nope\" does not exist")
            )
        }
        guard case .fail(let fields) = machine.received(error) else {
            Issue.record("expected failure")
            return
        }
        #expect(fields["S"] == "FATAL")
        #expect(fields.sqlState == "3D000")
        #expect(fields.message == "database \"nope\" does not exist")
        guard case .failed = machine.state else {
            Issue.record("expected .failed")
            return
        }
    }

    @Test func readyForQueryBeforeAuthenticationFails() {
        var machine = Machine(user: "tidegate", password: "pw")
        guard
            case .fail(let fields) = machine.received(Self.server { BackendEncoder.readyForQuery(&$0, status: .idle) })
        else {
            Issue.record("expected failure")
            return
        }
        #expect(fields.sqlState == "08P01")
        #expect(fields["S"] == "FATAL")

        // Also in the middle of SCRAM.
        var scram = Machine(user: "tidegate", password: "pw")
        _ = scram.received(Self.server { BackendEncoder.authenticationSASL(&$0, mechanisms: ["SCRAM-SHA-256"]) })
        guard
            case .fail(let scramFields) = scram.received(
                Self.server { BackendEncoder.readyForQuery(&$0, status: .idle) }
            )
        else {
            Issue.record("expected failure")
            return
        }
        #expect(scramFields.sqlState == "08P01")
    }

    @Test func passwordRequestWithoutPasswordFails() {
        var machine = Machine(user: "tidegate", password: nil)
        guard
            case .fail(let fields) = machine.received(
                Self.server { BackendEncoder.authenticationMD5(&$0, salt: [1, 2, 3, 4]) }
            )
        else {
            Issue.record("expected failure")
            return
        }
        #expect(fields.sqlState == "28000")
        #expect(fields.message?.contains("tidegate") == true)
    }

    @Test func unsupportedOrOutOfOrderAuthenticationFails() {
        var gss = Machine(user: "tidegate", password: "pw")
        let gssRequest = Self.server {
            $0.writePostgresMessage(id: BackendMessageID.authentication.rawValue) { $0.writeInteger(Int32(7)) }
        }
        guard case .fail(let gssFields) = gss.received(gssRequest) else {
            Issue.record("expected failure")
            return
        }
        #expect(gssFields.sqlState == "28000")

        var noSCRAM = Machine(user: "tidegate", password: "pw")
        guard
            case .fail(let saslFields) = noSCRAM.received(
                Self.server { BackendEncoder.authenticationSASL(&$0, mechanisms: ["OAUTHBEARER"]) }
            )
        else {
            Issue.record("expected failure")
            return
        }
        #expect(saslFields.message?.contains("OAUTHBEARER") == true)

        var outOfOrder = Machine(user: "tidegate", password: "pw")
        guard
            case .fail(let orderFields) = outOfOrder.received(
                Self.server { BackendEncoder.authenticationSASLFinal(&$0, data: []) }
            )
        else {
            Issue.record("expected failure")
            return
        }
        #expect(orderFields.sqlState == "08P01")
    }

    @Test func unexpectedMessageFails() {
        var machine = Machine(user: "tidegate", password: "pw")
        guard case .fail(let fields) = machine.received(Self.server { BackendEncoder.dataRow(&$0, values: ["x"]) })
        else {
            Issue.record("expected failure")
            return
        }
        #expect(fields.sqlState == "08P01")
        #expect(fields.message?.contains("'D'") == true)
    }

    @Test func malformedMessageFails() {
        var machine = Machine(user: "tidegate", password: "pw")
        let truncated = PostgresFrame(id: BackendMessageID.backendKeyData.rawValue, body: ByteBuffer(bytes: [0, 0]))
        guard case .fail(let fields) = machine.received(truncated) else {
            Issue.record("expected failure")
            return
        }
        #expect(fields.sqlState == "08P01")
    }
}
