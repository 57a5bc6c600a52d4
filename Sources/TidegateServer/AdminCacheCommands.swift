import Cache
import Foundation
import NIOCore
import PostgresWire
import SQLAnalysis

/// SHOW CACHE, SHOW CACHE QUERIES, EXPLAIN CACHE and CACHE FLUSH.
extension AdminCommands {
    static let cacheHelp: [(String, String)] = [
        ("SHOW CACHE", "the result cache: hits, misses, hit ratio, entries, bytes, invalidations, listener lag, Redis"),
        ("SHOW CACHE QUERIES", "the query fingerprints with the most hits and the most misses"),
        ("EXPLAIN CACHE sql", "whether a query is answered from the cache, and the relations, times and instruments it depends on"),
        ("CACHE FLUSH [relation]", "drop every cached result (or those reading one relation)"),
    ]

    /// Handles the cache commands; nil when `words` is not one of them.
    func cache(_ words: [String], raw: [String], query: String) async -> AdminResult? {
        let isCache = (words.count >= 2 && words[0] == "SHOW" && words[1] == "CACHE") || (words.first == "CACHE")
            || (words.count >= 2 && words[0] == "EXPLAIN" && words[1] == "CACHE")
        guard isCache else { return nil }
        if words[0] == "EXPLAIN" { return self.explainCache(query) }
        guard let tier = self.runtime.cacheTier else {
            return .error(
                ErrorFields(
                    severity: "ERROR", sqlState: "55000", message: "the cache is off",
                    hint: "Set cache.enabled: true (and cache.redis) in the configuration and restart Tidegate."))
        }
        switch words {
        case ["SHOW", "CACHE"]: return await self.showCache(tier)
        case ["SHOW", "CACHE", "QUERIES"]: return self.showCacheQueries(tier)
        case ["CACHE", "FLUSH"]:
            return await self.flush(tier, relation: nil)
        case _ where words.count == 3 && words[0] == "CACHE" && words[1] == "FLUSH":
            let relation = raw[2].trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
            guard self.runtime.config.relations[relation]?.cache == true else {
                let names = self.runtime.config.cachedRelations.keys.sorted().joined(separator: ", ")
                return .error(
                    ErrorFields(severity: "ERROR", sqlState: "42P01", message: "\"\(relation)\" is not a cached relation (cached: \(names))"))
            }
            return await self.flush(tier, relation: relation)
        default:
            return nil
        }
    }

    private func flush(_ tier: CacheTier, relation: String?) async -> AdminResult {
        let loop = self.runtime.anyLoop
        do {
            if let relation {
                tier.l1.removeAll()
                try await tier.flush(relation: relation, lsn: nil, on: loop).get()
                if tier.snapshot.generationOwed { throw CacheTierError(message: "Redis did not take the invalidation") }
            } else {
                try await tier.replaceGeneration(on: loop).get()
            }
            return .command("CACHE FLUSH")
        } catch {
            return .error(
                ErrorFields(
                    severity: "ERROR", sqlState: "58000", message: "CACHE FLUSH did not reach Redis: \(error)",
                    hint: "Until it does, Tidegate serves no hits; the flush is retried once a second."))
        }
    }

    private func showCache(_ tier: CacheTier) async -> AdminResult {
        let snapshot = tier.snapshot
        let l1 = tier.l1.stats
        let loop = self.runtime.anyLoop
        var redisKeys: String?
        var redisBytes: String?
        if let replies = try? await tier.redis.pipeline([RedisCommand("DBSIZE"), RedisCommand("INFO", "memory")], on: loop).get(),
            replies.count == 2
        {
            redisKeys = replies[0].int.map { "\($0)" }
            if let info = replies[1].string {
                redisBytes = info.split(whereSeparator: { $0.isNewline }).first { $0.hasPrefix("used_memory:") }.map {
                    String($0.dropFirst("used_memory:".count))
                }
            }
        }
        let lookups = snapshot.hits + snapshot.misses
        let ratio = lookups > 0 ? String(format: "%.4f", Double(snapshot.hits) / Double(lookups)) : nil
        let bypasses = snapshot.bypasses.values.reduce(0, +)
        let lag = tier.settings.listener.enabled
            ? tier.settings.listener.databases.map { "\($0)=\(snapshot.listenerLagMs[$0].map { "\($0)ms" } ?? "down")" }.joined(separator: ",")
            : "off"
        func list(_ counts: [String: Int]) -> String? {
            counts.isEmpty ? nil : counts.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")
        }
        let counters = tier.redis.counters
        return .rows(
            columns: [
                "hits", "misses", "hit_ratio", "bypasses", "fills", "fills_refused", "l1_entries", "l1_bytes", "redis_keys",
                "redis_bytes", "invalidations", "tag_updates", "invalidation_failures", "generation_replacements", "single_flight_waits",
                "listener_lag", "redis", "redis_timeouts", "bypass_reasons", "refusal_reasons",
            ],
            rows: [
                [
                    "\(snapshot.hits)", "\(snapshot.misses)", ratio, "\(bypasses)", "\(snapshot.fills)",
                    "\(snapshot.fillsRefused.values.reduce(0, +))", "\(l1.entries)", "\(l1.bytes)", redisKeys, redisBytes,
                    "\(snapshot.invalidations)", "\(snapshot.tagUpdates)", "\(snapshot.invalidationFailures)",
                    "\(snapshot.generationReplacements)", "\(snapshot.singleFlightWaits)", lag,
                    tier.redis.isAvailable ? (snapshot.generationOwed ? "up (generation owed)" : "up") : "down", "\(counters.timeouts)",
                    list(snapshot.bypasses), list(snapshot.fillsRefused),
                ]
            ], tag: "SHOW")
    }

    private func showCacheQueries(_ tier: CacheTier) -> AdminResult {
        let fingerprints = tier.snapshot.fingerprints
        let byHits = fingerprints.sorted { ($0.value.hits, $0.key) > ($1.value.hits, $1.key) }.prefix(10)
        let byMisses = fingerprints.sorted { ($0.value.misses, $0.key) > ($1.value.misses, $1.key) }.prefix(10)
        var rows: [[String?]] = []
        for (rank, (fingerprint, stats)) in byHits.enumerated() {
            rows.append(["hits", "\(rank + 1)", fingerprint, "\(stats.hits)", "\(stats.misses)"])
        }
        for (rank, (fingerprint, stats)) in byMisses.enumerated() {
            rows.append(["misses", "\(rank + 1)", fingerprint, "\(stats.hits)", "\(stats.misses)"])
        }
        return .rows(columns: ["by", "rank", "fingerprint", "hits", "misses"], rows: rows, tag: "SHOW")
    }

    private func explainCache(_ command: String) -> AdminResult {
        guard let range = command.range(of: "cache", options: [.caseInsensitive]) else { return .empty }
        let sql = String(command[range.upperBound...]).trimmingCharacters(in: .whitespacesAndNewlines)
        let config = self.runtime.config
        let profile = CacheAnalyzer.analyze(sql, relations: config.cachedRelations)
        var rows: [[String?]] = []
        if !config.cache.enabled { rows.append(["cache", "off (cache.enabled is false)"]) }
        rows.append(["fingerprint", profile.fingerprint.isEmpty ? nil : profile.fingerprint])
        rows.append(["cacheable", profile.refusal.map { "no: \($0)" } ?? (profile.hintOff ? "no: cache=off hint" : "yes")])
        if !profile.functions.isEmpty { rows.append(["functions", profile.functions.joined(separator: ", ")]) }
        if let staleness = profile.maxStalenessSeconds { rows.append(["max_staleness", "\(staleness)s"]) }
        if let setting = config.cache.queries[profile.fingerprint] {
            rows.append(["query setting", setting.enabled ? "ttl_ms=\(setting.ttlMs.map { "\($0)" } ?? "default")" : "off"])
        }
        for dependency in profile.dependencies {
            func bounds(_ list: [TimeBound]) -> String {
                list.isEmpty ? "unbounded" : list.map { bound in
                    let value: String
                    switch bound.value {
                    case .literal(let text): value = "'\(text)'"
                    case .parameter(let number): value = "$\(number)"
                    }
                    return (bound.inclusive ? "≤/≥ " : "</> ") + value + (bound.offsetMicros != 0 ? " + \(bound.offsetMicros / 1_000_000)s" : "")
                }.joined(separator: ", ")
            }
            let instruments = dependency.instruments.map { list in
                list.map { value -> String in
                    switch value {
                    case .literal(let text): return "'\(text)'"
                    case .parameter(let number): return "$\(number)"
                    }
                }.joined(separator: ", ")
            } ?? "all"
            rows.append(["depends on", "\(dependency.relation): from \(bounds(dependency.lowerBounds)); until \(bounds(dependency.upperBounds)); instruments \(instruments)"])
            if let tier = self.runtime.cacheTier, dependency.upperBounds.allSatisfy({ if case .literal = $0.value { true } else { false } }),
                dependency.lowerBounds.allSatisfy({ if case .literal = $0.value { true } else { false } })
            {
                let resolved = DependencyResolver.resolve([dependency], parameters: [], utcSession: false)
                let tags = tier.tags.readTags(database: "<db>", dependencies: resolved)
                rows.append(["tags", "\(tags.count): " + tags.prefix(8).joined(separator: " ") + (tags.count > 8 ? " …" : "")])
            }
        }
        return .rows(columns: ["item", "value"], rows: rows, tag: "EXPLAIN")
    }
}
