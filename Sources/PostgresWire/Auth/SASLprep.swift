import Foundation

/// SASLprep (RFC 4013) as PostgreSQL applies it to SCRAM passwords
/// (`pg_saslprep` in src/common/saslprep.c), including its fallback: if the
/// password is not valid UTF-8 or SASLprep would reject it (prohibited
/// characters, bidi violation), the *raw* password bytes are used instead.
/// Because of that fallback, an imperfect prohibition check only matters for
/// exotic passwords; it can never make a password unusable on both sides.
///
/// Handling:
/// - Pure ASCII (the common case, including ASCII control characters, exactly
///   like PostgreSQL's fast path): returned unchanged.
/// - Otherwise (approximation, not an exhaustive RFC 3454 implementation):
///   1. non-ASCII space characters (RFC 3454 C.1.2) are mapped to U+0020;
///   2. "commonly mapped to nothing" characters (B.1: soft hyphen, zero-width
///      joiners, variation selectors, BOM, ...) are removed;
///   3. NFKC normalization via Foundation's `precomposedStringWithCompatibilityMapping`
///      (Foundation's Unicode version is newer than the 3.2 that RFC 4013 pins, so
///      results may differ for characters assigned after Unicode 3.2);
///   4. prohibited output (C.1.2, C.2.1, C.2.2, C.3 private use, C.4 non-characters,
///      C.5 surrogates, C.6, C.7, C.8, C.9 tags) and unassigned code points (by the
///      current Unicode tables, not 3.2's A.1) make the result "prohibited";
///   5. the bidi rule (RFC 3454 §6) is checked approximately: right-to-left
///      characters are recognised by Hebrew/Arabic/Syriac/Thaana/NKo/etc. block
///      ranges, left-to-right ones as alphabetic scalars outside those ranges.
///   A prohibited result falls back to the raw UTF-8 bytes, as PostgreSQL does.
public enum SASLprep {
    /// The bytes to feed into PBKDF2 for `password`.
    public static func prepare(_ password: String) -> [UInt8] {
        let raw = Array(password.utf8)
        if raw.allSatisfy({ $0 < 0x80 }) { return raw }
        return prepareNonASCII(password) ?? raw
    }

    /// Byte variant: invalid UTF-8 is used as-is (PostgreSQL behaviour).
    public static func prepare(bytes: [UInt8]) -> [UInt8] {
        if bytes.allSatisfy({ $0 < 0x80 }) { return bytes }
        guard let string = String(validating: bytes, as: UTF8.self) else { return bytes }
        return prepareNonASCII(string) ?? bytes
    }

    /// Returns nil when the result would be prohibited.
    static func prepareNonASCII(_ password: String) -> [UInt8]? {
        // Step 1+2: mapping.
        var mapped = String.UnicodeScalarView()
        for scalar in password.unicodeScalars {
            if isNonASCIISpace(scalar.value) {
                mapped.append(" ")
            } else if !isMappedToNothing(scalar.value) {
                mapped.append(scalar)
            }
        }
        // Step 3: NFKC.
        let normalized = String(mapped).precomposedStringWithCompatibilityMapping
        let scalars = Array(normalized.unicodeScalars)
        if scalars.isEmpty { return nil }  // PostgreSQL rejects an empty result.
        // Step 4: prohibited output and unassigned code points.
        for scalar in scalars {
            if isProhibited(scalar.value) || scalar.properties.generalCategory == .unassigned { return nil }
        }
        // Step 5: bidi.
        let hasRandAL = scalars.contains { isRandAL($0) }
        if hasRandAL {
            if scalars.contains(where: { isLCat($0) }) { return nil }
            guard let first = scalars.first, let last = scalars.last, isRandAL(first), isRandAL(last) else {
                return nil
            }
        }
        return Array(normalized.utf8)
    }

    // RFC 3454 C.1.2 (as in PostgreSQL's table).
    static func isNonASCIISpace(_ v: UInt32) -> Bool {
        v == 0x00A0 || v == 0x1680 || (0x2000...0x200B).contains(v) || v == 0x202F || v == 0x205F || v == 0x3000
    }

    // RFC 3454 B.1.
    static func isMappedToNothing(_ v: UInt32) -> Bool {
        switch v {
        case 0x00AD, 0x034F, 0x1806, 0x180B...0x180D, 0x200B...0x200D, 0x2060, 0xFE00...0xFE0F, 0xFEFF: return true
        default: return false
        }
    }

    static func isProhibited(_ v: UInt32) -> Bool {
        if isNonASCIISpace(v) { return true }  // C.1.2
        switch v {
        case 0x0000...0x001F, 0x007F: return true  // C.2.1
        case 0x0080...0x009F, 0x06DD, 0x070F, 0x180E, 0x200C, 0x200D, 0x2028, 0x2029, 0x2060...0x2063,
            0x206A...0x206F, 0xFEFF, 0xFFF9...0xFFFC, 0x1D173...0x1D17A:
            return true  // C.2.2
        case 0xE000...0xF8FF, 0xF0000...0xFFFFD, 0x100000...0x10FFFD: return true  // C.3
        case 0xFDD0...0xFDEF: return true  // C.4
        case 0xD800...0xDFFF: return true  // C.5
        case 0xFFF9...0xFFFD: return true  // C.6
        case 0x2FF0...0x2FFB: return true  // C.7
        case 0x0340, 0x0341, 0x200E, 0x200F, 0x202A...0x202E: return true  // C.8
        case 0xE0001, 0xE0020...0xE007F: return true  // C.9
        default:
            return (v & 0xFFFE) == 0xFFFE  // C.4: U+nFFFE / U+nFFFF
        }
    }

    /// Approximation of bidi categories R and AL (RFC 3454 D.1).
    static func isRandAL(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x05BE, 0x05C0, 0x05C3, 0x05D0...0x05F4, 0x0608, 0x060B, 0x060D, 0x061B...0x064A, 0x066D...0x066F,
            0x0671...0x06D5, 0x06E5, 0x06E6, 0x06EE, 0x06EF, 0x06FA...0x070D, 0x0710, 0x0712...0x072F,
            0x074D...0x07A5, 0x07B1, 0x07C0...0x07EA, 0x07F4, 0x07F5, 0x07FA...0x0815, 0x0840...0x0858,
            0x0860...0x08C9, 0x200F, 0xFB1D, 0xFB1F...0xFB28, 0xFB2A...0xFD3D, 0xFD50...0xFDFC, 0xFE70...0xFEFC,
            0x10800...0x10FFF, 0x1E800...0x1EFFF:
            // Combining marks inside those blocks are NSM, not R/AL.
            return !(s.properties.generalCategory == .nonspacingMark || s.properties.generalCategory == .enclosingMark)
        default:
            return false
        }
    }

    /// Approximation of bidi category L (RFC 3454 D.2): alphabetic and not R/AL.
    static func isLCat(_ s: Unicode.Scalar) -> Bool {
        s.properties.isAlphabetic && !isRandAL(s)
            && !(s.properties.generalCategory == .nonspacingMark || s.properties.generalCategory == .enclosingMark)
    }
}
