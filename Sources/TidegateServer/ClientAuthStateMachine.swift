import Crypto
import NIOConcurrencyHelpers
import NIOCore
import PostgresWire

/// Authenticates a client against the configured users: SCRAM-SHA-256, md5 or trust. Pure.
/// An unknown user goes through the same exchange as a known one and fails the same way, so the
/// reply never tells whether a user exists.
struct ClientAuthStateMachine {
    enum State {
        case initial
        case awaitingMD5(salt: [UInt8])
        case awaitingSASLInitial(SCRAMServerExchange)
        case awaitingSASLFinal(SCRAMServerExchange)
        case authenticated
        case failed
    }

    enum Action {
        case send(ByteBuffer)
        case authenticated
        case fail(ErrorFields)
    }

    private(set) var state = State.initial
    let userName: String
    let user: TidegateConfig.User?
    let method: ClientAuthMethod

    init(userName: String, user: TidegateConfig.User?, method: ClientAuthMethod) {
        self.userName = userName
        self.user = user
        self.method = method
    }

    var failure: ErrorFields {
        ErrorFields(
            severity: "FATAL", sqlState: "28P01",
            message: "password authentication failed for user \"\(self.userName)\"")
    }

    mutating func start() -> Action {
        var buffer = ByteBuffer()
        let stored = self.user?.password ?? ""
        switch self.method {
        case .trust:
            self.state = .authenticated
            return .authenticated
        case .md5 where !SCRAMVerifier.looksLikeVerifier(stored):
            let salt = (0..<4).map { _ in UInt8.random(in: 0...255) }
            BackendEncoder.authenticationMD5(&buffer, salt: salt)
            self.state = .awaitingMD5(salt: salt)
            return .send(buffer)
        case .md5, .scramSHA256:
            let verifier: SCRAMVerifier
            if let user = self.user, !user.password.isEmpty {
                if SCRAMVerifier.looksLikeVerifier(user.password), let parsed = try? SCRAMVerifier(parsing: user.password) {
                    verifier = parsed
                } else {
                    verifier = Self.verifier(for: user)
                }
            } else {
                // Mock exchange for an unknown user or one without a password: it always fails, with a
                // salt that is stable per user name so repeated attempts do not tell unknown users apart.
                verifier = Self.mockVerifier(for: self.userName)
            }
            BackendEncoder.authenticationSASL(&buffer, mechanisms: ["SCRAM-SHA-256"])
            self.state = .awaitingSASLInitial(SCRAMServerExchange(verifier: verifier))
            return .send(buffer)
        }
    }

    /// A verifier no password matches, for the mock exchange. Its salt is derived from the user name
    /// and a per-process secret, as PostgreSQL does.
    static func mockVerifier(for userName: String = "") -> SCRAMVerifier {
        func random(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255) } }
        let salt = Array(SHA256.hash(data: Self.mockSecret + Array(userName.utf8)).prefix(16))
        return SCRAMVerifier(iterations: 4096, salt: salt, storedKey: random(32), serverKey: random(32))
    }

    private static let mockSecret: [UInt8] = (0..<32).map { _ in UInt8.random(in: 0...255) }

    /// Plain passwords are turned into a verifier once per user and password, not per login.
    private static let verifierCache = VerifierCache()

    static func verifier(for user: TidegateConfig.User) -> SCRAMVerifier {
        self.verifierCache.verifier(user: user.name, password: user.password)
    }

    mutating func received(_ frame: PostgresFrame) -> Action {
        guard frame.id == FrontendMessageID.password.rawValue else {
            self.state = .failed
            return .fail(
                ErrorFields(severity: "FATAL", sqlState: "08P01", message: "expected a password message during authentication"))
        }
        var body = frame.body
        var buffer = ByteBuffer()
        switch self.state {
        case .awaitingMD5(let salt):
            guard let response = body.readNullTerminatedString(), let user = self.user, !user.password.isEmpty,
                MD5Password.verify(response: response, user: self.userName, storedPassword: user.password, salt: salt)
            else {
                self.state = .failed
                return .fail(self.failure)
            }
            self.state = .authenticated
            return .authenticated
        case .awaitingSASLInitial(var exchange):
            guard let mechanism = body.readNullTerminatedString(), let length = body.readInteger(as: Int32.self) else {
                self.state = .failed
                return .fail(ErrorFields(severity: "FATAL", sqlState: "08P01", message: "malformed SASLInitialResponse"))
            }
            guard mechanism == "SCRAM-SHA-256" else {
                self.state = .failed
                return .fail(
                    ErrorFields(
                        severity: "FATAL", sqlState: "28000",
                        message: "client selected an invalid SASL authentication mechanism"))
            }
            let data = length >= 0 ? (body.readBytes(length: Int(length)) ?? []) : []
            do {
                let serverFirst = try exchange.receiveClientFirst(data)
                BackendEncoder.authenticationSASLContinue(&buffer, data: serverFirst)
                self.state = .awaitingSASLFinal(exchange)
                return .send(buffer)
            } catch {
                self.state = .failed
                return .fail(ErrorFields(severity: "FATAL", sqlState: "08P01", message: "malformed SCRAM message: \(error)"))
            }
        case .awaitingSASLFinal(var exchange):
            let data = body.readBytes(length: body.readableBytes) ?? []
            do {
                let serverFinal = try exchange.receiveClientFinal(data)
                guard let user = self.user, !user.password.isEmpty else {
                    self.state = .failed
                    return .fail(self.failure)
                }
                BackendEncoder.authenticationSASLFinal(&buffer, data: serverFinal)
                self.state = .authenticated
                return .send(buffer)
            } catch SCRAMError.invalidProof {
                self.state = .failed
                return .fail(self.failure)
            } catch {
                self.state = .failed
                return .fail(ErrorFields(severity: "FATAL", sqlState: "08P01", message: "malformed SCRAM message: \(error)"))
            }
        case .initial, .authenticated, .failed:
            self.state = .failed
            return .fail(ErrorFields(severity: "FATAL", sqlState: "08P01", message: "unexpected password message"))
        }
    }

    var isAuthenticated: Bool {
        if case .authenticated = self.state { return true }
        return false
    }
}

/// Verifiers derived from plain passwords, computed once (4096 PBKDF2 rounds per login would cost more
/// than the rest of a connection).
final class VerifierCache: Sendable {
    private let cache = NIOLockedValueBox([String: (String, SCRAMVerifier)]())

    func verifier(user: String, password: String) -> SCRAMVerifier {
        if let cached = self.cache.withLockedValue({ $0[user] }), cached.0 == password { return cached.1 }
        let salt = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let verifier = SCRAMVerifier.derive(password: password, salt: salt, iterations: 4096)
        self.cache.withLockedValue { $0[user] = (password, verifier) }
        return verifier
    }
}
