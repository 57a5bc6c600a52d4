import Testing

@testable import TidegateServer

@Suite struct ParameterSetTests {
    @Test func fingerprintFollowsContentNotOrder() {
        var a = ParameterSet()
        a["TimeZone"] = "UTC"
        a["DateStyle"] = "ISO, MDY"
        var b = ParameterSet()
        b["DateStyle"] = "ISO, MDY"
        b["TimeZone"] = "UTC"
        #expect(a.fingerprint == b.fingerprint)
        b["TimeZone"] = "Asia/Kolkata"
        #expect(a.fingerprint != b.fingerprint)
        b["TimeZone"] = "UTC"
        #expect(a.fingerprint == b.fingerprint)
        b["TimeZone"] = nil
        #expect(b["TimeZone"] == nil)
        #expect(a.fingerprint != b.fingerprint)
        #expect(ParameterSet(a.values).fingerprint == a.fingerprint)
    }
}
