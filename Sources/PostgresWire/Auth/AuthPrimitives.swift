import Crypto
import _CryptoExtras

/// Internal helpers shared by the SCRAM and MD5 code. Namespaced to avoid clashing
/// with helpers elsewhere in the module.
enum AuthPrimitives {
    // MARK: Random

    static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var out = [UInt8]()
        out.reserveCapacity(count)
        for _ in 0..<count { out.append(UInt8.random(in: .min ... .max, using: &generator)) }
        return out
    }

    // MARK: Comparison

    /// Constant-time (in the contents) equality. The length is not treated as secret.
    static func constantTimeEquals<A: Collection, B: Collection>(_ a: A, _ b: B) -> Bool
    where A.Element == UInt8, B.Element == UInt8 {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for (x, y) in zip(a, b) { diff |= x ^ y }
        return diff == 0
    }

    static func xor(_ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        // Callers guarantee equal lengths (both 32-byte SHA-256 outputs); zip keeps it safe anyway.
        zip(a, b).map { $0 ^ $1 }
    }

    // MARK: Hashes

    static func hmacSHA256<K: Collection, M: Collection>(key: K, _ message: M) -> [UInt8]
    where K.Element == UInt8, M.Element == UInt8 {
        let mac = HMAC<SHA256>.authenticationCode(for: Array(message), using: SymmetricKey(data: Array(key)))
        return Array(mac)
    }

    static func sha256<M: Collection>(_ message: M) -> [UInt8] where M.Element == UInt8 {
        Array(SHA256.hash(data: Array(message)))
    }

    static func md5Hex<M: Collection>(_ message: M) -> [UInt8] where M.Element == UInt8 {
        hexBytes(Array(Insecure.MD5.hash(data: Array(message))))
    }

    /// PBKDF2-HMAC-SHA256 with a 32-byte output (SCRAM's `Hi()`). Total: never
    /// traps, never throws. `iterations` is clamped to `1...Int32.max` (callers
    /// validate peer-supplied counts before getting here).
    static func pbkdf2SHA256(password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        let rounds = clampedIterations(iterations)
        // The swift-crypto BoringSSL wrapper force-unwraps the buffers' base
        // addresses, so empty inputs take the pure-Swift path instead.
        if !password.isEmpty, !salt.isEmpty,
            let key = try? KDF.Insecure.PBKDF2.deriveKey(
                from: password, salt: salt, using: .sha256, outputByteCount: 32,
                unsafeUncheckedRounds: rounds)
        {
            return key.withUnsafeBytes { Array($0) }
        }
        return pbkdf2SHA256Fallback(password: password, salt: salt, iterations: rounds)
    }

    static func clampedIterations(_ iterations: Int) -> Int {
        max(1, min(iterations, Int(Int32.max)))
    }

    /// RFC 8018 PBKDF2 with HMAC-SHA-256, single 32-byte block, built on `HMAC<SHA256>`.
    /// Used for empty passwords/salts and should the library call ever fail.
    static func pbkdf2SHA256Fallback(password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        let key = SymmetricKey(data: password)
        var u = Array(HMAC<SHA256>.authenticationCode(for: salt + [0, 0, 0, 1], using: key))
        var t = u
        var round = 1
        while round < iterations {
            u = Array(HMAC<SHA256>.authenticationCode(for: u, using: key))
            for i in t.indices { t[i] ^= u[i] }
            round += 1
        }
        return t
    }

    // MARK: Hex

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    static func hexBytes(_ bytes: [UInt8]) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(hexDigits[Int(b >> 4)])
            out.append(hexDigits[Int(b & 0x0F)])
        }
        return out
    }

    // MARK: Base64 (RFC 4648, standard alphabet, padded; strict decoding)

    private static let b64Alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func base64Encode<C: Collection>(_ input: C) -> String where C.Element == UInt8 {
        let bytes = Array(input)
        var out = [UInt8]()
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out.append(b64Alphabet[Int((n >> 18) & 63)])
            out.append(b64Alphabet[Int((n >> 12) & 63)])
            out.append(b64Alphabet[Int((n >> 6) & 63)])
            out.append(b64Alphabet[Int(n & 63)])
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let n = UInt32(bytes[i]) << 16
            out.append(b64Alphabet[Int((n >> 18) & 63)])
            out.append(b64Alphabet[Int((n >> 12) & 63)])
            out.append(UInt8(ascii: "="))
            out.append(UInt8(ascii: "="))
        } else if rest == 2 {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out.append(b64Alphabet[Int((n >> 18) & 63)])
            out.append(b64Alphabet[Int((n >> 12) & 63)])
            out.append(b64Alphabet[Int((n >> 6) & 63)])
            out.append(UInt8(ascii: "="))
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func b64Value(_ c: UInt8) -> UInt32? {
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return UInt32(c - UInt8(ascii: "A"))
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return UInt32(c - UInt8(ascii: "a")) + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(c - UInt8(ascii: "0")) + 52
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }

    /// Strict decoder: length must be a multiple of 4, only alphabet characters,
    /// `=` padding only at the end (at most two), zero bits under the padding.
    /// Returns nil on any violation.
    static func base64Decode<C: Collection>(_ input: C) -> [UInt8]? where C.Element == UInt8 {
        let chars = Array(input)
        guard chars.count % 4 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(chars.count / 4 * 3)
        var i = 0
        while i < chars.count {
            let isLast = i + 4 == chars.count
            var n: UInt32 = 0
            var pad = 0
            for j in 0..<4 {
                let c = chars[i + j]
                if c == UInt8(ascii: "=") {
                    // Padding allowed only in the last quantum, positions 2 and 3, and contiguous to the end.
                    guard isLast, j >= 2 else { return nil }
                    pad += 1
                    n <<= 6
                } else {
                    guard pad == 0, let v = b64Value(c) else { return nil }
                    n = n << 6 | v
                }
            }
            // Reject non-canonical encodings (non-zero bits under the padding).
            if pad == 1, n & 0xFF != 0 { return nil }
            if pad == 2, n & 0xFFFF != 0 { return nil }
            out.append(UInt8((n >> 16) & 0xFF))
            if pad < 2 { out.append(UInt8((n >> 8) & 0xFF)) }
            if pad < 1 { out.append(UInt8(n & 0xFF)) }
            i += 4
        }
        return out
    }

    static func base64Decode(_ string: String) -> [UInt8]? {
        base64Decode(Array(string.utf8))
    }

    // MARK: Decimal

    /// Parses a non-empty run of ASCII digits (no sign, at most 10 digits).
    static func parseDecimal<C: Collection>(_ input: C) -> Int? where C.Element == UInt8 {
        guard !input.isEmpty, input.count <= 10 else { return nil }
        var value = 0
        for c in input {
            guard c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(c - UInt8(ascii: "0"))
        }
        return value
    }
}
