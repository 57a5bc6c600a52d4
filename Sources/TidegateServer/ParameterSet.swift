/// Reported parameters (ParameterStatus) with an order-independent fingerprint kept up to date on every
/// change, so two sets can be compared without walking them.
struct ParameterSet: Sendable, Equatable {
    private(set) var values: [String: String] = [:]
    private(set) var fingerprint: UInt64 = 0

    init() {}

    init(_ values: [String: String]) {
        for (name, value) in values { self[name] = value }
    }

    var isEmpty: Bool { self.values.isEmpty }

    subscript(name: String) -> String? {
        get { self.values[name] }
        set {
            if let old = self.values[name] { self.fingerprint ^= Self.hash(name, old) }
            self.values[name] = newValue
            if let newValue { self.fingerprint ^= Self.hash(name, newValue) }
        }
    }

    private static func hash(_ name: String, _ value: String) -> UInt64 {
        var hash = FNV1a64()
        for byte in name.utf8 { hash.add(byte) }
        hash.add(0)
        for byte in value.utf8 { hash.add(byte) }
        return hash.value
    }
}
