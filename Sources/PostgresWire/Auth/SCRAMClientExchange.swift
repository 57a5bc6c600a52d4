/// Client side of a SCRAM-SHA-256 exchange, used by Tidegate to log in to
/// PostgreSQL backends. Pure state machine, no I/O.
///
///     var exchange = SCRAMClientExchange(password: password)
///     let clientFirst = exchange.clientFirstMessage()               // SASLInitialResponse payload
///     let clientFinal = try exchange.receiveServerFirst(serverFirst) // SASLResponse payload
///     try exchange.receiveServerFinal(serverFinal)                   // from AuthenticationSASLFinal
///
/// Only the `n,,` GS2 header (no channel binding) is used. The iteration count
/// the server may request is bounded by `maxIterations` so a malicious server
/// cannot make us spin in PBKDF2. Any error moves the exchange to ``State/failed``.
public struct SCRAMClientExchange: Sendable, CustomStringConvertible {
    /// Default upper bound on the server-requested iteration count
    /// (PostgreSQL's default is 4096; 10 million takes a few seconds).
    public static let defaultMaxIterations = 10_000_000

    public enum State: Sendable, Hashable {
        /// ``clientFirstMessage()`` not called yet.
        case initial
        /// client-first sent; waiting for server-first.
        case waitingForServerFirst
        /// client-final sent; waiting for server-final.
        case waitingForServerFinal
        /// The server proved knowledge of the verifier.
        case succeeded
        case failed
    }

    private enum Phase: Sendable {
        case initial
        case waitingForServerFirst(clientFirstBare: [UInt8])
        case waitingForServerFinal(expectedServerSignature: [UInt8])
        case succeeded
        case failed
    }

    private let password: String
    public let username: String
    public let clientNonce: String
    public let maxIterations: Int
    private var phase: Phase = .initial

    /// - Parameters:
    ///   - password: plaintext password (SASLprep is applied as PostgreSQL does).
    ///   - username: the user name sent in client-first; PostgreSQL ignores it and
    ///     libpq sends an empty one, hence the default.
    ///   - clientNonce: 18 random bytes, base64-encoded, when nil. A supplied nonce
    ///     must be printable ASCII without ',' (it is sent verbatim).
    ///   - maxIterations: largest iteration count accepted from the server.
    public init(
        password: String, username: String = "", clientNonce: String? = nil,
        maxIterations: Int = SCRAMClientExchange.defaultMaxIterations
    ) {
        self.password = password
        self.username = username
        self.clientNonce = clientNonce ?? AuthPrimitives.base64Encode(AuthPrimitives.randomBytes(18))
        self.maxIterations = maxIterations
    }

    public var state: State {
        switch phase {
        case .initial: return .initial
        case .waitingForServerFirst: return .waitingForServerFirst
        case .waitingForServerFinal: return .waitingForServerFinal
        case .succeeded: return .succeeded
        case .failed: return .failed
        }
    }

    /// Redacted: never prints the password.
    public var description: String {
        "SCRAMClientExchange(state: \(state), <redacted>)"
    }

    /// Returns client-first-message (`n,,n=<user>,r=<nonce>`) and (re)starts the exchange.
    public mutating func clientFirstMessage() -> [UInt8] {
        let bare = SCRAMMessage.join([
            Array("n=".utf8) + SCRAMMessage.escapeSASLName(username),
            Array("r=\(clientNonce)".utf8),
        ])
        phase = .waitingForServerFirst(clientFirstBare: bare)
        return Array("n,,".utf8) + bare
    }

    /// Processes server-first-message and returns client-final-message
    /// (`c=biws,r=<nonce>,p=<ClientProof>`). Runs PBKDF2 with the server's iteration count.
    public mutating func receiveServerFirst(_ message: [UInt8]) throws(SCRAMError) -> [UInt8] {
        guard case .waitingForServerFirst(let clientFirstBare) = phase else {
            phase = .failed
            throw .unexpectedMessage
        }
        do {
            let (clientFinal, expected) = try processServerFirst(message, clientFirstBare: clientFirstBare)
            phase = .waitingForServerFinal(expectedServerSignature: expected)
            return clientFinal
        } catch {
            phase = .failed
            throw error
        }
    }

    /// Verifies server-final-message (`v=<ServerSignature>`). Throws
    /// ``SCRAMError/serverSignatureMismatch`` if the server signature is wrong and
    /// ``SCRAMError/serverError(_:)`` for `e=<reason>`.
    public mutating func receiveServerFinal(_ message: [UInt8]) throws(SCRAMError) {
        guard case .waitingForServerFinal(let expected) = phase else {
            phase = .failed
            throw .unexpectedMessage
        }
        phase = .failed
        let fields = SCRAMMessage.fields(message[...])
        guard let first = fields.first, !first.isEmpty else {
            throw .malformedMessage("server-final-message is empty")
        }
        let attr = try SCRAMMessage.attribute(first)
        switch attr.name {
        case UInt8(ascii: "e"):
            throw .serverError(String(decoding: attr.value, as: UTF8.self))
        case UInt8(ascii: "v"):
            try SCRAMMessage.validateExtensions(fields.dropFirst())
            let signature = try SCRAMMessage.base64(attr.value, attribute: "v")
            guard AuthPrimitives.constantTimeEquals(signature, expected) else { throw .serverSignatureMismatch }
            phase = .succeeded
        case UInt8(ascii: "m"):
            throw .unsupportedMandatoryExtension
        default:
            throw .malformedMessage("expected attribute 'v' or 'e'")
        }
    }

    // MARK: - Internals

    private func processServerFirst(
        _ message: [UInt8], clientFirstBare: [UInt8]
    ) throws(SCRAMError) -> (clientFinal: [UInt8], expectedServerSignature: [UInt8]) {
        let fields = SCRAMMessage.fields(message[...])
        // server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count ["," extensions]
        if let first = fields.first, first.first == UInt8(ascii: "e"), first.count >= 2,
            first[first.startIndex + 1] == SCRAMMessage.equals
        {
            throw .serverError(String(decoding: first.dropFirst(2), as: UTF8.self))
        }
        let nonce = try SCRAMMessage.expect("r", in: fields.count > 0 ? fields[0] : nil)
        let saltValue = try SCRAMMessage.expect("s", in: fields.count > 1 ? fields[1] : nil)
        let iterValue = try SCRAMMessage.expect("i", in: fields.count > 2 ? fields[2] : nil)
        try SCRAMMessage.validateExtensions(fields.dropFirst(3))

        guard SCRAMMessage.isValidNonce(nonce) else { throw .malformedMessage("invalid nonce") }
        let ourNonce = Array(clientNonce.utf8)
        guard nonce.starts(with: ourNonce) else { throw .nonceMismatch }

        let salt = try SCRAMMessage.base64(saltValue, attribute: "s")
        guard !salt.isEmpty else { throw .malformedMessage("empty salt") }

        guard let iterations = AuthPrimitives.parseDecimal(iterValue) else {
            throw .malformedMessage("invalid iteration count")
        }
        guard iterations >= 1, iterations <= maxIterations else { throw .iterationCountOutOfRange(iterations) }

        let keys = SCRAMKeys(password: SASLprep.prepare(password), salt: salt, iterations: iterations)
        let storedKey = AuthPrimitives.sha256(keys.clientKey)

        let withoutProof = SCRAMMessage.join([Array("c=biws".utf8), Array("r=".utf8) + Array(nonce)])
        let authMessage = SCRAMMessage.authMessage(
            clientFirstBare: clientFirstBare, serverFirst: message, clientFinalWithoutProof: withoutProof)
        let clientSignature = AuthPrimitives.hmacSHA256(key: storedKey, authMessage)
        let proof = AuthPrimitives.xor(keys.clientKey, clientSignature)
        let serverSignature = AuthPrimitives.hmacSHA256(key: keys.serverKey, authMessage)

        let clientFinal = SCRAMMessage.join([withoutProof, Array("p=\(AuthPrimitives.base64Encode(proof))".utf8)])
        return (clientFinal, serverSignature)
    }
}
