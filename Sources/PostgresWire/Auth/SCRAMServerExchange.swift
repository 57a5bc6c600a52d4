/// Server side of a SCRAM-SHA-256 exchange (RFC 5802 / RFC 7677), used to
/// authenticate clients connecting to Tidegate.
///
/// Pure state machine, no I/O: feed it the SASL payloads from
/// `SASLInitialResponse` / `SASLResponse` and send back the returned bytes in
/// `AuthenticationSASLContinue` / `AuthenticationSASLFinal`.
///
///     var exchange = SCRAMServerExchange(verifier: verifier)
///     let serverFirst = try exchange.receiveClientFirst(clientFirst)
///     let serverFinal = try exchange.receiveClientFinal(clientFinal)  // throws .invalidProof on wrong password
///
/// Only SCRAM-SHA-256 (no `-PLUS`) is offered, so a client requesting channel
/// binding (`p=`) is rejected; `n` and `y` GS2 flags are accepted. The user name
/// in client-first is ignored (PostgreSQL clients send `n=` because the user comes
/// from the startup packet). Any error moves the exchange to ``State/failed``.
public struct SCRAMServerExchange: Sendable {
    public enum State: Sendable, Hashable {
        /// Waiting for client-first-message.
        case initial
        /// server-first-message sent; waiting for client-final-message.
        case waitingForClientFinal
        /// The client proved knowledge of the password; server-final was produced.
        case succeeded
        /// The exchange failed; further messages are rejected.
        case failed
    }

    private enum Phase: Sendable {
        case initial
        case waitingForClientFinal(gs2Header: [UInt8], clientFirstBare: [UInt8], serverFirst: [UInt8], nonce: [UInt8])
        case succeeded(clientKey: [UInt8])
        case failed
    }

    public let verifier: SCRAMVerifier
    /// The server part of the nonce (appended to the client's nonce).
    public let serverNonce: String
    private var phase: Phase = .initial

    /// - Parameters:
    ///   - verifier: the user's stored SCRAM secret.
    ///   - serverNonce: the server nonce; 18 random bytes, base64-encoded (as
    ///     PostgreSQL does) when nil. A caller-supplied nonce must consist of
    ///     printable ASCII without ','; an invalid one makes `receiveClientFirst` throw.
    public init(verifier: SCRAMVerifier, serverNonce: String? = nil) {
        self.verifier = verifier
        self.serverNonce = serverNonce ?? AuthPrimitives.base64Encode(AuthPrimitives.randomBytes(18))
    }

    public var state: State {
        switch phase {
        case .initial: return .initial
        case .waitingForClientFinal: return .waitingForClientFinal
        case .succeeded: return .succeeded
        case .failed: return .failed
        }
    }

    /// The client's ClientKey (`ClientProof XOR ClientSignature`), available after a
    /// successful ``receiveClientFinal(_:)``. With it (and the verifier) Tidegate
    /// could itself authenticate as that user to a backend sharing the same verifier.
    public var clientKey: [UInt8]? {
        if case .succeeded(let key) = phase { return key }
        return nil
    }

    /// Processes client-first-message and returns server-first-message
    /// (`r=<client nonce><server nonce>,s=<salt>,i=<iterations>`).
    public mutating func receiveClientFirst(_ message: [UInt8]) throws(SCRAMError) -> [UInt8] {
        guard case .initial = phase else {
            phase = .failed
            throw .unexpectedMessage
        }
        do {
            return try processClientFirst(message)
        } catch {
            phase = .failed
            throw error
        }
    }

    /// Processes client-final-message and returns server-final-message (`v=<ServerSignature>`).
    /// Throws ``SCRAMError/invalidProof`` if the client does not know the password.
    public mutating func receiveClientFinal(_ message: [UInt8]) throws(SCRAMError) -> [UInt8] {
        guard case .waitingForClientFinal(let gs2Header, let clientFirstBare, let serverFirst, let nonce) = phase else {
            phase = .failed
            throw .unexpectedMessage
        }
        do {
            let (result, clientKey) = try processClientFinal(
                message, gs2Header: gs2Header, clientFirstBare: clientFirstBare, serverFirst: serverFirst, nonce: nonce)
            phase = .succeeded(clientKey: clientKey)
            return result
        } catch {
            phase = .failed
            throw error
        }
    }

    // MARK: - Internals

    private mutating func processClientFirst(_ message: [UInt8]) throws(SCRAMError) -> [UInt8] {
        let all = message[...]
        let fields = SCRAMMessage.fields(all)
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        guard fields.count >= 4 else { throw .malformedMessage("client-first-message is truncated") }
        let flag = fields[0]
        if flag.first == UInt8(ascii: "p") {
            guard flag.count >= 3, flag[flag.startIndex + 1] == SCRAMMessage.equals else {
                throw .malformedMessage("invalid channel binding flag")
            }
            throw .channelBindingNotSupported
        }
        guard flag.count == 1, flag.first == UInt8(ascii: "n") || flag.first == UInt8(ascii: "y") else {
            throw .malformedMessage("invalid channel binding flag")
        }
        let authzid = fields[1]
        if !authzid.isEmpty {
            guard authzid.count >= 2, authzid.first == UInt8(ascii: "a"),
                authzid[authzid.startIndex + 1] == SCRAMMessage.equals
            else { throw .malformedMessage("invalid authorization identity field") }
            throw .authorizationIdentityNotSupported
        }
        let gs2Header = Array(all[all.startIndex..<fields[2].startIndex])
        let clientFirstBare = Array(all[fields[2].startIndex...])

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        _ = try SCRAMMessage.expect("n", in: fields[2])  // user name ignored (comes from the startup packet)
        let clientNonce = try SCRAMMessage.expect("r", in: fields[3])
        guard SCRAMMessage.isValidNonce(clientNonce) else { throw .malformedMessage("invalid client nonce") }
        try SCRAMMessage.validateExtensions(fields[4...])

        let serverNonceBytes = Array(serverNonce.utf8)
        guard SCRAMMessage.isValidNonce(serverNonceBytes) else {
            throw .malformedMessage("invalid server nonce configured")
        }
        let nonce = Array(clientNonce) + serverNonceBytes
        let serverFirst = SCRAMMessage.join([
            Array("r=".utf8) + nonce,
            Array("s=\(AuthPrimitives.base64Encode(verifier.salt))".utf8),
            Array("i=\(verifier.iterations)".utf8),
        ])
        phase = .waitingForClientFinal(
            gs2Header: gs2Header, clientFirstBare: clientFirstBare, serverFirst: serverFirst, nonce: nonce)
        return serverFirst
    }

    private func processClientFinal(
        _ message: [UInt8], gs2Header: [UInt8], clientFirstBare: [UInt8], serverFirst: [UInt8], nonce: [UInt8]
    ) throws(SCRAMError) -> (serverFinal: [UInt8], clientKey: [UInt8]) {
        let all = message[...]
        let fields = SCRAMMessage.fields(all)
        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        guard fields.count >= 3 else { throw .malformedMessage("client-final-message is truncated") }

        let cbind = try SCRAMMessage.expect("c", in: fields[0])
        let cbindData = try SCRAMMessage.base64(cbind, attribute: "c")
        guard cbindData == gs2Header else { throw .channelBindingMismatch }

        let finalNonce = try SCRAMMessage.expect("r", in: fields[1])
        guard AuthPrimitives.constantTimeEquals(finalNonce, nonce) else { throw .nonceMismatch }

        let proofField = fields[fields.count - 1]
        let proofValue = try SCRAMMessage.expect("p", in: proofField)
        try SCRAMMessage.validateExtensions(fields[2..<(fields.count - 1)])
        let proof = try SCRAMMessage.base64(proofValue, attribute: "p")
        guard proof.count == 32 else { throw .malformedMessage("client proof has the wrong length") }

        // Everything before ",p=..."
        let withoutProof = Array(all[all.startIndex..<(proofField.startIndex - 1)])
        let authMessage = SCRAMMessage.authMessage(
            clientFirstBare: clientFirstBare, serverFirst: serverFirst, clientFinalWithoutProof: withoutProof)

        let clientSignature = AuthPrimitives.hmacSHA256(key: verifier.storedKey, authMessage)
        let clientKey = AuthPrimitives.xor(proof, clientSignature)
        guard AuthPrimitives.constantTimeEquals(AuthPrimitives.sha256(clientKey), verifier.storedKey) else {
            throw .invalidProof
        }
        let serverSignature = AuthPrimitives.hmacSHA256(key: verifier.serverKey, authMessage)
        return (Array("v=\(AuthPrimitives.base64Encode(serverSignature))".utf8), clientKey)
    }
}
