/// Errors produced by the SCRAM-SHA-256 exchanges and by ``SCRAMVerifier`` parsing.
///
/// Every malformed or hostile input from the peer surfaces as one of these; the
/// exchanges never trap on peer input. Associated strings are fixed descriptions
/// chosen by this module (they never echo peer bytes), except ``serverError(_:)``
/// which carries the server's `e=` value, decoded lossily as UTF-8.
public enum SCRAMError: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    /// The message does not follow the RFC 5802 grammar (missing/out-of-order
    /// attribute, bad base64, bad nonce characters, truncated message, ...).
    case malformedMessage(String)
    /// The client asked for channel binding (`p=...`); Tidegate only offers
    /// SCRAM-SHA-256, never SCRAM-SHA-256-PLUS.
    case channelBindingNotSupported
    /// The client sent an authorization identity (`a=...`) in the GS2 header;
    /// like PostgreSQL, this is not supported.
    case authorizationIdentityNotSupported
    /// The peer sent a mandatory extension (`m=...`), which we do not understand.
    case unsupportedMandatoryExtension
    /// The `c=` attribute of client-final does not echo the GS2 header of client-first.
    case channelBindingMismatch
    /// The nonce does not match (server side: client-final nonce differs from the
    /// combined nonce; client side: the server nonce does not start with our nonce).
    case nonceMismatch
    /// The server asked for an iteration count outside the accepted range.
    case iterationCountOutOfRange(Int)
    /// The client proof is wrong (wrong password, or tampered AuthMessage).
    case invalidProof
    /// The server signature in server-final does not match (server does not know
    /// the password/verifier, or a man in the middle).
    case serverSignatureMismatch
    /// The server answered server-final with `e=<value>`.
    case serverError(String)
    /// A message arrived in a state where it is not expected (wrong order,
    /// exchange already finished or failed).
    case unexpectedMessage
    /// A stored `SCRAM-SHA-256$...` verifier string could not be parsed.
    case malformedVerifier(String)

    public var description: String {
        switch self {
        case .malformedMessage(let why): return "malformed SCRAM message: \(why)"
        case .channelBindingNotSupported: return "SCRAM channel binding is not supported"
        case .authorizationIdentityNotSupported: return "SCRAM authorization identity is not supported"
        case .unsupportedMandatoryExtension: return "unsupported SCRAM mandatory extension"
        case .channelBindingMismatch: return "SCRAM channel binding data does not match the GS2 header"
        case .nonceMismatch: return "SCRAM nonce mismatch"
        case .iterationCountOutOfRange(let n): return "SCRAM iteration count \(n) out of accepted range"
        case .invalidProof: return "SCRAM client proof is invalid"
        case .serverSignatureMismatch: return "SCRAM server signature mismatch"
        case .serverError(let value): return "SCRAM server error: \(value)"
        case .unexpectedMessage: return "unexpected SCRAM message in current state"
        case .malformedVerifier(let why): return "malformed SCRAM verifier: \(why)"
        }
    }
}
