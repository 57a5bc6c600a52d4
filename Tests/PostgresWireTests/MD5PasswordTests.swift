import Testing

@testable import PostgresWire

@Suite struct MD5PasswordTests {
    /// (user, password, salt, stored hash, client response), computed independently with Python hashlib.
    static let vectors: [(String, String, [UInt8], String, String)] = [
        ("postgres", "secret", [1, 2, 3, 4], "md553f48b7c4b76a86ce72276c5755f217d", "md5bb41a296aab6baccb36ff243a562abff"),
        ("alice", "correct horse", [0xDE, 0xAD, 0xBE, 0xEF], "md527d601e4766ef321bab4559b3758b31c",
         "md583c995683430a164d9fe07842ce5ce7d"),
        ("tidegate", "tidegate", [0, 0, 0, 0], "md5d83a940d8e7280577117171b83d203b8", "md5fcc977544bcbdde7ee17ccfa75ec1b8e"),
        ("\u{fc}n\u{ef}", "p\u{e4}$$", [0xFF, 0x00, 0x7F, 0x80], "md50ceeb7139a0d8e90e0f581f8ff25a911",
         "md52aaaf888896fba9f9b7e0deb24e645cb"),
    ]

    @Test func matchesPythonVectors() {
        for (user, password, salt, stored, response) in Self.vectors {
            #expect(MD5Password.hash(user: user, password: password) == stored)
            #expect(MD5Password.response(user: user, password: password, salt: salt) == response)
            #expect(MD5Password.responseFromStored(stored: stored, salt: salt) == response)
            #expect(MD5Password.isMD5Hash(stored))
        }
    }

    /// pg_authid.rolpassword of the lab's `tg_md5` role (password "tg_md5"), produced by PostgreSQL 15.
    @Test func matchesPostgresStoredHash() {
        #expect(MD5Password.hash(user: "tg_md5", password: "tg_md5") == "md579e665a29b231af406c835890e84c59f")
    }

    @Test func verifyAcceptsCorrectResponsesWithBothStoredForms() {
        for (user, password, salt, stored, response) in Self.vectors {
            #expect(MD5Password.verify(response: response, user: user, storedPassword: password, salt: salt))
            #expect(MD5Password.verify(response: response, user: user, storedPassword: stored, salt: salt))
        }
    }

    @Test func verifyRejectsWrongResponses() {
        let (user, password, salt, stored, response) = Self.vectors[0]
        let wrongPassword = MD5Password.response(user: user, password: "Secret", salt: salt)
        let wrongSalt = MD5Password.response(user: user, password: password, salt: [1, 2, 3, 5])
        let wrongUser = MD5Password.response(user: "postgres2", password: password, salt: salt)
        for storedForm in [password, stored] {
            for bad in [wrongPassword, wrongSalt, wrongUser, "", "md5", response.uppercased(), String(response.dropLast()),
                        response + "0", stored, password]
            {
                #expect(!MD5Password.verify(response: bad, user: user, storedPassword: storedForm, salt: salt))
            }
            #expect(!MD5Password.verify(response: response, user: user, storedPassword: storedForm, salt: [4, 3, 2, 1]))
        }
    }

    @Test func userMattersForPlaintextStoredPassword() {
        let (user, password, salt, stored, response) = Self.vectors[0]
        #expect(!MD5Password.verify(response: response, user: "other", storedPassword: password, salt: salt))
        // With an md5-hashed stored password the user name is already baked into the hash.
        #expect(MD5Password.verify(response: response, user: "other", storedPassword: stored, salt: salt))
        _ = user
    }

    @Test func scramStoredPasswordCannotBeUsedForMD5() {
        let verifier =
            "SCRAM-SHA-256$4096:xDc6o1x8LELyPWRYJIW/5g==$sHWQZi44t9Hf7kFLZSw86c93i3gOlw2EiK49pzvPxiI=:BHIxlpAmAOVHIyETfbmTPLU5wkFDx4wHMO2HfkomreY="
        let response = MD5Password.response(user: "tidegate", password: verifier, salt: [1, 2, 3, 4])
        #expect(!MD5Password.verify(response: response, user: "tidegate", storedPassword: verifier, salt: [1, 2, 3, 4]))
    }

    @Test func storedFormDetection() {
        #expect(!MD5Password.isMD5Hash("md553F48B7C4B76A86CE72276C5755F217D"))  // uppercase: plaintext to PostgreSQL
        #expect(!MD5Password.isMD5Hash("md553f48b7c4b76a86ce72276c5755f217"))
        #expect(!MD5Password.isMD5Hash("md553f48b7c4b76a86ce72276c5755f217dd"))
        #expect(!MD5Password.isMD5Hash("md553f48b7c4b76a86ce72276c5755f217g"))
        #expect(!MD5Password.isMD5Hash("xyz53f48b7c4b76a86ce72276c5755f217d"))
        #expect(MD5Password.responseFromStored(stored: "secret", salt: [1, 2, 3, 4]) == nil)
        #expect(MD5Password.responseFromStored(stored: "", salt: []) == nil)

        // A plaintext password that merely looks like "md5" + non-hex is hashed as plaintext.
        let plain = "md5-not-a-hash"
        let response = MD5Password.response(user: "u", password: plain, salt: [9, 9, 9, 9])
        #expect(MD5Password.verify(response: response, user: "u", storedPassword: plain, salt: [9, 9, 9, 9]))
    }
}
