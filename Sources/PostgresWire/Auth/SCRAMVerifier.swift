/// A SCRAM-SHA-256 password verifier ("secret") in PostgreSQL's stored form:
///
///     SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>
///
/// as found in `pg_authid.rolpassword`. It lets a server authenticate clients
/// without knowing the plaintext password.
public struct SCRAMVerifier: Sendable, Hashable, CustomStringConvertible {
    public static let mechanismName = "SCRAM-SHA-256"
    /// PostgreSQL's default `scram_iterations`.
    public static let defaultIterations = 4096
    /// PostgreSQL's salt length (`SCRAM_DEFAULT_SALT_LEN`).
    public static let defaultSaltLength = 16

    public var iterations: Int
    public var salt: [UInt8]
    /// `H(ClientKey)`, 32 bytes.
    public var storedKey: [UInt8]
    /// `HMAC(SaltedPassword, "Server Key")`, 32 bytes.
    public var serverKey: [UInt8]

    /// Memberwise initializer; performs no validation.
    public init(iterations: Int, salt: [UInt8], storedKey: [UInt8], serverKey: [UInt8]) {
        self.iterations = iterations
        self.salt = salt
        self.storedKey = storedKey
        self.serverKey = serverKey
    }

    /// Parses PostgreSQL's stored form. Requires iterations >= 1, a non-empty salt,
    /// and 32-byte StoredKey/ServerKey, all strictly base64-encoded.
    public init(parsing string: String) throws(SCRAMError) {
        let bytes = Array(string.utf8)[...]
        let dollar = UInt8(ascii: "$")
        let colon = UInt8(ascii: ":")
        let parts = bytes.split(separator: dollar, omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .malformedVerifier("expected three '$'-separated parts") }
        guard parts[0].elementsEqual(Self.mechanismName.utf8) else {
            throw .malformedVerifier("not a SCRAM-SHA-256 verifier")
        }
        let iterSalt = parts[1].split(separator: colon, omittingEmptySubsequences: false)
        let keys = parts[2].split(separator: colon, omittingEmptySubsequences: false)
        guard iterSalt.count == 2, keys.count == 2 else { throw .malformedVerifier("expected ':'-separated pairs") }
        guard let iterations = AuthPrimitives.parseDecimal(iterSalt[0]), iterations >= 1 else {
            throw .malformedVerifier("invalid iteration count")
        }
        guard let salt = AuthPrimitives.base64Decode(iterSalt[1]), !salt.isEmpty else {
            throw .malformedVerifier("invalid salt")
        }
        guard let storedKey = AuthPrimitives.base64Decode(keys[0]), storedKey.count == 32 else {
            throw .malformedVerifier("invalid StoredKey")
        }
        guard let serverKey = AuthPrimitives.base64Decode(keys[1]), serverKey.count == 32 else {
            throw .malformedVerifier("invalid ServerKey")
        }
        self.init(iterations: iterations, salt: salt, storedKey: storedKey, serverKey: serverKey)
    }

    /// True if `s` parses as a SCRAM-SHA-256 verifier (PostgreSQL's own test for
    /// "is this rolpassword a SCRAM secret").
    public static func looksLikeVerifier(_ s: String) -> Bool {
        (try? SCRAMVerifier(parsing: s)) != nil
    }

    /// Derives the verifier for `password` (after ``SASLprep``), exactly as
    /// PostgreSQL's `scram_build_secret` does.
    ///
    /// Never fails: `iterations` is clamped to `1...Int32.max` and the clamped
    /// value is what the verifier records. An empty salt is accepted here but
    /// such a verifier does not round-trip through ``init(parsing:)`` and clients
    /// reject `s=` with an empty salt, so always pass a real salt (PostgreSQL uses 16 random bytes).
    public static func derive(password: String, salt: [UInt8], iterations: Int) -> SCRAMVerifier {
        let iterations = AuthPrimitives.clampedIterations(iterations)
        let keys = SCRAMKeys(password: SASLprep.prepare(password), salt: salt, iterations: iterations)
        return SCRAMVerifier(
            iterations: iterations, salt: salt,
            storedKey: AuthPrimitives.sha256(keys.clientKey), serverKey: keys.serverKey)
    }

    /// Derives a verifier with a fresh random salt (``defaultSaltLength`` bytes).
    public static func derive(password: String, iterations: Int = defaultIterations) -> SCRAMVerifier {
        derive(password: password, salt: AuthPrimitives.randomBytes(defaultSaltLength), iterations: iterations)
    }

    /// PostgreSQL's stored form.
    public var stringValue: String {
        "\(Self.mechanismName)$\(iterations):\(AuthPrimitives.base64Encode(salt))$"
            + "\(AuthPrimitives.base64Encode(storedKey)):\(AuthPrimitives.base64Encode(serverKey))"
    }

    /// Redacted: does not print salt or keys.
    public var description: String {
        "SCRAMVerifier(iterations: \(iterations), <redacted>)"
    }
}

/// Keys derived from the password (internal).
struct SCRAMKeys {
    var clientKey: [UInt8]
    var serverKey: [UInt8]

    init(password: [UInt8], salt: [UInt8], iterations: Int) {
        let salted = AuthPrimitives.pbkdf2SHA256(password: password, salt: salt, iterations: iterations)
        clientKey = AuthPrimitives.hmacSHA256(key: salted, Array("Client Key".utf8))
        serverKey = AuthPrimitives.hmacSHA256(key: salted, Array("Server Key".utf8))
    }
}
