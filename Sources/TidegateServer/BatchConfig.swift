import Configuration
import Ingest

extension TidegateConfig {
    /// Insert coalescing of one relation (`relations.<name>.batch`).
    public struct BatchSettings: Sendable, Equatable {
        public var enabled = false
        public var maxRows = 5_000
        public var maxBytes = 4 << 20
        public var maxDelayMs = 5
        /// Batches of one group committing at a time.
        public var maxConcurrent = 2
        /// While fewer batches than this commit, the next one goes at once.
        public var eagerBelow = 1
        /// Bytes of values waiting per loop and relation; past it, writers are not read until batches commit.
        public var maxQueueBytes = 64 << 20
        /// `ignore`: a row whose natural key (the primary key) is already there is skipped and counts 0.
        public var ignoreConflicts = false
        public var rules: [BatchRule] = []

        public var policy: BatchPolicy {
            BatchPolicy(
                maxRows: self.maxRows, maxBytes: self.maxBytes, maxDelayNanos: Int64(self.maxDelayMs) * 1_000_000,
                maxConcurrent: self.maxConcurrent, eagerBelow: self.eagerBelow)
        }
    }

    /// Relations whose INSERTs are batched, by name.
    public var batchedRelations: [String: Relation] {
        self.relations.filter { $0.value.batch.enabled }
    }

    static func readBatch(_ fields: ConfigFields, relation: String, ruleNames: [String]) -> BatchSettings {
        var batch = BatchSettings()
        let key = "relations.\(relation).batch"
        fields.bool("\(key).enabled", &batch.enabled)
        fields.int("\(key).max_rows", &batch.maxRows, min: 1, max: 1_000_000)
        fields.int("\(key).max_bytes", &batch.maxBytes, min: 1_024, max: 256 << 20)
        fields.int("\(key).max_delay_ms", &batch.maxDelayMs, min: 0, max: 60_000)
        fields.int("\(key).max_concurrent", &batch.maxConcurrent, min: 1, max: 64)
        fields.int("\(key).max_queue_bytes", &batch.maxQueueBytes, min: 1_024)
        fields.int("\(key).eager_below", &batch.eagerBelow, min: 0, max: 64)
        var conflict = "error"
        fields.string("\(key).on_conflict", &conflict)
        switch conflict.lowercased() {
        case "error": batch.ignoreConflicts = false
        case "ignore": batch.ignoreConflicts = true
        default: fields.problems.append("\(key).on_conflict: expected error or ignore, got \"\(conflict)\"")
        }
        for name in ruleNames {
            let ruleKey = "\(key).rules.\(name)"
            var column = ""
            fields.string("\(ruleKey).column", &column)
            if column.isEmpty {
                fields.problems.append("\(ruleKey).column: the column the rule checks is missing")
                continue
            }
            var checks: [BatchRule.Check] = []
            let numeric: [(String, (Double) -> BatchRule.Check)] = [
                ("greater_than", { .greaterThan($0) }), ("greater_or_equal", { .greaterOrEqual($0) }),
                ("less_than", { .lessThan($0) }), ("less_or_equal", { .lessOrEqual($0) }),
            ]
            for (suffix, make) in numeric where fields.has("\(ruleKey).\(suffix)") {
                if let value = fields.double("\(ruleKey).\(suffix)") { checks.append(make(value)) }
            }
            if let ms = fields.optionalInt("\(ruleKey).max_future_ms", min: 0) { checks.append(.maxFutureMs(Int64(ms))) }
            if let ms = fields.optionalInt("\(ruleKey).max_past_ms", min: 0) { checks.append(.maxPastMs(Int64(ms))) }
            var notNull = false
            fields.bool("\(ruleKey).not_null", &notNull)
            if notNull { checks.append(.notNull) }
            guard checks.count == 1 else {
                fields.problems.append(
                    "\(ruleKey): give exactly one of greater_than, greater_or_equal, less_than, less_or_equal, max_future_ms, max_past_ms, not_null"
                )
                continue
            }
            batch.rules.append(BatchRule(name: name, column: column, check: checks[0]))
        }
        return batch
    }

    /// The `relations.<name>.batch` rows of SHOW CONFIG.
    var batchConfigRows: [[String?]] {
        self.relations.values.sorted(by: { $0.name < $1.name }).compactMap { relation in
            let batch = relation.batch
            guard batch.enabled else { return nil }
            return [
                "relations.\(relation.name).batch",
                "max_rows=\(batch.maxRows) max_bytes=\(batch.maxBytes) max_delay_ms=\(batch.maxDelayMs) max_concurrent=\(batch.maxConcurrent) "
                    + "on_conflict=\(batch.ignoreConflicts ? "ignore" : "error") rules=\(batch.rules.map(\.name).joined(separator: ","))",
            ]
        }
    }
}

extension ConfigFields {
    /// A number (whole or not); nil and a problem when it is not one.
    func double(_ key: String) -> Double? {
        if let string = self.reader.string(forKey: ConfigKey(key)) {
            guard let value = Double(string.trimmingCharacters(in: .whitespaces)) else {
                self.problems.append("\(key): expected a number, got \"\(string)\"")
                return nil
            }
            return value
        }
        if let value = self.reader.double(forKey: ConfigKey(key)) { return value }
        if let value = self.reader.int(forKey: ConfigKey(key)) { return Double(value) }
        return nil
    }
}
