import Configuration

/// Reads typed values from the configuration, collecting every problem (so one run of check-config
/// reports them all) instead of stopping at the first.
final class ConfigFields {
    let reader: ConfigReader
    var problems: [String] = []

    init(_ reader: ConfigReader) { self.reader = reader }

    func has(_ key: String) -> Bool {
        self.reader.string(forKey: ConfigKey(key)) != nil || self.reader.int(forKey: ConfigKey(key)) != nil
            || self.reader.bool(forKey: ConfigKey(key)) != nil
    }

    func int(_ key: String, _ value: inout Int, min: Int = 0, max: Int = Int.max) {
        if let string = self.reader.string(forKey: ConfigKey(key)) {
            guard let parsed = Int(string.trimmingCharacters(in: .whitespaces)) else {
                self.problems.append("\(key): expected a whole number, got \"\(string)\"")
                return
            }
            value = parsed
        } else if let parsed = self.reader.int(forKey: ConfigKey(key)) {
            value = parsed
        }
        if value < min || value > max {
            self.problems.append("\(key): \(value) is out of range (\(min)...\(max == Int.max ? "" : String(max)))")
        }
    }

    func string(_ key: String, _ value: inout String) {
        if let parsed = self.reader.string(forKey: ConfigKey(key)) { value = parsed }
    }

    func bool(_ key: String, _ value: inout Bool) {
        if let string = self.reader.string(forKey: ConfigKey(key)) {
            switch string.lowercased() {
            case "true", "yes", "on", "1": value = true
            case "false", "no", "off", "0": value = false
            default: self.problems.append("\(key): expected true or false, got \"\(string)\"")
            }
        } else if let parsed = self.reader.bool(forKey: ConfigKey(key)) {
            value = parsed
        }
    }

    /// An optional whole number: nil when the key is absent.
    func optionalInt(_ key: String, min: Int, max: Int = Int.max) -> Int? {
        guard self.has(key) else { return nil }
        var value = 0
        self.int(key, &value, min: min, max: max)
        return value
    }
}
