/// PostgreSQL `md5` password authentication (AuthenticationMD5Password).
///
/// - Stored form: `"md5" + hex(md5(password + user))` (35 chars, lowercase hex).
/// - Client response: `"md5" + hex(md5(hex(md5(password + user)) + salt))` with
///   the 4-byte salt from the server.
///
/// Strings are hashed as their UTF-8 bytes (no SASLprep, like PostgreSQL).
public enum MD5Password {
    /// Length of the stored form, `"md5"` + 32 hex digits.
    public static let storedLength = 35

    /// The stored form for `user`/`password`.
    public static func hash(user: String, password: String) -> String {
        "md5" + String(decoding: AuthPrimitives.md5Hex(Array(password.utf8) + Array(user.utf8)), as: UTF8.self)
    }

    /// What a client sends in PasswordMessage for the given salt.
    public static func response(user: String, password: String, salt: [UInt8]) -> String {
        let inner = AuthPrimitives.md5Hex(Array(password.utf8) + Array(user.utf8))
        return "md5" + String(decoding: AuthPrimitives.md5Hex(inner + salt), as: UTF8.self)
    }

    /// The client response computed from a stored `md5...` hash (so the plaintext
    /// is not needed). Nil if `stored` is not a well-formed md5 hash.
    public static func responseFromStored(stored: String, salt: [UInt8]) -> String? {
        guard isMD5Hash(stored) else { return nil }
        let inner = Array(stored.utf8.dropFirst(3))
        return "md5" + String(decoding: AuthPrimitives.md5Hex(inner + salt), as: UTF8.self)
    }

    /// True if `s` is a stored md5 hash: `"md5"` + 32 lowercase hex digits
    /// (PostgreSQL's `get_password_type` test).
    public static func isMD5Hash(_ s: String) -> Bool {
        let bytes = Array(s.utf8)
        guard bytes.count == storedLength, bytes.starts(with: Array("md5".utf8)) else { return false }
        return bytes.dropFirst(3).allSatisfy {
            ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "f"))
        }
    }

    /// Verifies a client's md5 response against the stored password, which may be
    /// the md5-hashed form or plaintext. A SCRAM verifier cannot be used for md5
    /// authentication (PostgreSQL refuses it too) and yields false. The comparison
    /// is constant-time in the contents.
    public static func verify(response: String, user: String, storedPassword: String, salt: [UInt8]) -> Bool {
        let expected: String
        if isMD5Hash(storedPassword) {
            guard let r = responseFromStored(stored: storedPassword, salt: salt) else { return false }
            expected = r
        } else if SCRAMVerifier.looksLikeVerifier(storedPassword) {
            return false
        } else {
            expected = self.response(user: user, password: storedPassword, salt: salt)
        }
        return AuthPrimitives.constantTimeEquals(Array(response.utf8), Array(expected.utf8))
    }
}
