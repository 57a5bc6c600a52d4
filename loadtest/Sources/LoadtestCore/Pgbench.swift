import Foundation

/// What pgbench writes, read back: per-transaction log lines (`-l`), progress lines (`-P`), the
/// summary and client aborts.
public enum PgbenchOutput {
    /// One line of a per-transaction log: `client_id transaction_no time script_no time_epoch time_us
    /// [schedule_lag]`. `time` is the latency in µs, or `failed` / `skipped`.
    public struct Transaction: Sendable, Equatable {
        public var client: Int
        /// µs; nil for a failed or skipped transaction.
        public var latency: UInt64?
        public var skipped: Bool
        public var script: Int
        /// When it ended, in Unix µs.
        public var end: Int64
    }

    public static func transaction(_ line: Substring) -> Transaction? {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 6, let client = Int(fields[0]), let script = Int(fields[3]), let seconds = Int64(fields[4]),
            let micros = Int64(fields[5])
        else { return nil }
        let end = seconds * 1_000_000 + micros
        switch fields[2] {
        case "failed", "serialization", "deadlock", "other":
            return Transaction(client: client, latency: nil, skipped: false, script: script, end: end)
        case "skipped":
            return Transaction(client: client, latency: nil, skipped: true, script: script, end: end)
        default:
            guard let latency = UInt64(fields[2]) else { return nil }
            return Transaction(client: client, latency: latency, skipped: false, script: script, end: end)
        }
    }

    /// `progress: 5.0 s, 18234.9 tps, lat 0.875 ms stddev 0.123, 0 failed` → (5.0, 18234.9, 0.875).
    public static func progress(_ line: Substring) -> (seconds: Double, tps: Double, latencyMs: Double?)? {
        guard line.hasPrefix("progress: ") else { return nil }
        let parts = line.dropFirst("progress: ".count).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count >= 2, let seconds = Double(parts[0].split(separator: " ").first ?? ""),
            let tps = Double(parts[1].split(separator: " ").first ?? "")
        else { return nil }
        var latency: Double?
        if parts.count >= 3, parts[2].hasPrefix("lat ") {
            latency = Double(parts[2].dropFirst(4).split(separator: " ").first ?? "")
        }
        return (seconds, tps, latency)
    }

    /// `tps = 18234.912345 (without initial connection time)`.
    public static func tps(_ output: String) -> Double? {
        for line in output.split(separator: "\n") where line.hasPrefix("tps = ") {
            if let value = Double(line.dropFirst(6).split(separator: " ").first ?? "") { return value }
        }
        return nil
    }

    /// pgbench's error lines: client aborts (`client 3 script 0 aborted in command 1 query 0: ERROR:  …`)
    /// and its own failures (`pgbench: error: …`), each with the server's message (the first line of
    /// it). pgbench does not print the SQLSTATE.
    public static func errors(_ output: String) -> [String] {
        var messages: [String] = []
        let lines = output.split(separator: "\n", omittingEmptySubsequences: false)
        for line in lines {
            if line.hasPrefix("client "), let range = line.range(of: " aborted in command ") {
                let rest = line[range.upperBound...]
                let message = rest.firstIndex(of: ":").map { rest[rest.index(after: $0)...] } ?? rest
                messages.append(message.trimmingCharacters(in: .whitespaces))
            } else if line.hasPrefix("pgbench: error: ") || line.hasPrefix("pgbench: fatal: ") {
                messages.append(String(line.dropFirst("pgbench: error: ".count)))
            }
        }
        return messages
    }
}
