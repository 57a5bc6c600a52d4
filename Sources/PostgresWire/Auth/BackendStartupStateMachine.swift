import NIOCore

/// Logs a client in to a PostgreSQL server (Tidegate to its nodes, tidegate-loadtest to its targets):
/// answers the authentication requests, collects ParameterStatus and BackendKeyData, and reports ready
/// at the first ReadyForQuery. Pure: frames in, actions out.
public struct BackendStartupStateMachine {
    public enum State {
        case awaitingAuthentication
        case scram(SCRAMClientExchange)
        case awaitingOK
        case awaitingReady
        case ready
        case failed
    }

    public enum Action: Equatable {
        case send(ByteBuffer)
        case wait
        case ready
        case fail(ErrorFields)
    }

    public private(set) var state = State.awaitingAuthentication
    public let user: String
    public let password: String?
    /// Ends "the server asks for a password for user "…" but …": where the caller's password comes from.
    public let noPasswordAdvice: String
    public private(set) var parameters: [String: String] = [:]
    public private(set) var backendKey: (processID: Int32, secretKey: Int32) = (0, 0)

    public init(user: String, password: String?, noPasswordAdvice: String = "none was given") {
        self.user = user
        self.password = password
        self.noPasswordAdvice = noPasswordAdvice
    }

    public static func failure(_ message: String, sqlState: String = "08006") -> Action {
        .fail(ErrorFields(severity: "FATAL", sqlState: sqlState, message: message))
    }

    public mutating func received(_ frame: PostgresFrame) -> Action {
        do {
            return try self.receivedThrowing(frame)
        } catch {
            self.state = .failed
            return Self.failure("server sent an invalid message during login: \(error.message)", sqlState: "08P01")
        }
    }

    private mutating func receivedThrowing(_ frame: PostgresFrame) throws(WireError) -> Action {
        switch frame.backendID {
        case .errorResponse:
            self.state = .failed
            var fields = try BackendMessage.errorFields(frame)
            // A login failure always ends the connection: report it as FATAL whatever the server said.
            fields.makeFatal()
            return .fail(fields)
        case .noticeResponse, .negotiateProtocolVersion:
            return .wait
        case .parameterStatus:
            let (name, value) = try BackendMessage.parameterStatus(frame)
            self.parameters[name] = value
            return .wait
        case .backendKeyData:
            let key = try BackendMessage.backendKeyData(frame)
            self.backendKey = key
            return .wait
        case .readyForQuery:
            switch self.state {
            case .awaitingReady:
                self.state = .ready
                return .ready
            case .awaitingAuthentication, .scram, .awaitingOK, .ready, .failed:
                self.state = .failed
                return Self.failure("server sent ReadyForQuery before authentication finished", sqlState: "08P01")
            }
        case .authentication:
            return try self.authentication(BackendMessage.authentication(frame))
        default:
            self.state = .failed
            return Self.failure("server sent an unexpected message '\(Character(UnicodeScalar(frame.id)))' during login", sqlState: "08P01")
        }
    }

    private mutating func authentication(_ request: BackendMessage.Authentication) -> Action {
        var buffer = ByteBuffer()
        switch (self.state, request) {
        case (.awaitingAuthentication, .ok), (.awaitingOK, .ok):
            self.state = .awaitingReady
            return .wait
        case (.awaitingAuthentication, .cleartextPassword):
            guard let password = self.password else { return self.noPassword() }
            FrontendEncoder.password(&buffer, password)
            self.state = .awaitingOK
            return .send(buffer)
        case (.awaitingAuthentication, .md5Password(let salt)):
            guard let password = self.password else { return self.noPassword() }
            FrontendEncoder.password(&buffer, MD5Password.response(user: self.user, password: password, salt: salt))
            self.state = .awaitingOK
            return .send(buffer)
        case (.awaitingAuthentication, .sasl(let mechanisms)):
            guard mechanisms.contains("SCRAM-SHA-256") else {
                self.state = .failed
                return Self.failure("server offers no supported SASL mechanism (\(mechanisms.joined(separator: ", ")))")
            }
            guard let password = self.password else { return self.noPassword() }
            var exchange = SCRAMClientExchange(password: password)
            FrontendEncoder.saslInitialResponse(&buffer, mechanism: "SCRAM-SHA-256", data: exchange.clientFirstMessage())
            self.state = .scram(exchange)
            return .send(buffer)
        case (.scram(var exchange), .saslContinue(let data)):
            do {
                let final = try exchange.receiveServerFirst(data)
                FrontendEncoder.saslResponse(&buffer, data: final)
                self.state = .scram(exchange)
                return .send(buffer)
            } catch {
                self.state = .failed
                return Self.failure("SCRAM login to the server failed: \(error)", sqlState: "28000")
            }
        case (.scram(var exchange), .saslFinal(let data)):
            do {
                try exchange.receiveServerFinal(data)
                self.state = .awaitingOK
                return .wait
            } catch {
                self.state = .failed
                return Self.failure("SCRAM login to the server failed: \(error)", sqlState: "28000")
            }
        case (_, .unsupported(let code)):
            self.state = .failed
            return Self.failure("server asked for an unsupported authentication method (\(code))", sqlState: "28000")
        default:
            self.state = .failed
            return Self.failure("server sent an authentication message out of order", sqlState: "08P01")
        }
    }

    private mutating func noPassword() -> Action {
        self.state = .failed
        return Self.failure("the server asks for a password for user \"\(self.user)\" but \(self.noPasswordAdvice)", sqlState: "28000")
    }
}
