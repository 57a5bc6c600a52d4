import Foundation
import Ingest
import Testing

@testable import TidegateServer

@Suite struct BatchConfigTests {
    @Test func theLabFileDeclaresTicksBatchingOff() async throws {
        let config = try await TidegateConfig.load(path: ConfigTests.labConfigPath, environment: [:])
        let batch = try #require(config.relations["ticks"]?.batch)
        #expect(!batch.enabled)
        #expect(batch.ignoreConflicts)
        #expect(
            batch.rules.sorted { $0.name < $1.name } == [
                BatchRule(name: "price_positive", column: "price", check: .greaterThan(0)),
                BatchRule(name: "ts_not_future", column: "ts", check: .maxFutureMs(5_000)),
            ])
        let on = try await TidegateConfig.load(
            path: ConfigTests.labConfigPath, overrides: ["relations.ticks.batch.enabled": "true"], environment: [:])
        #expect(on.batchedRelations.keys.sorted() == ["ticks"])
    }

    @Test func settingsAndRules() async throws {
        let yaml = ConfigTests.minimalYAML + """

            relations:
              ticks:
                batch:
                  enabled: true
                  max_rows: 100
                  max_bytes: 65536
                  max_delay_ms: 2
                  max_concurrent: 3
                  on_conflict: ignore
                  rules:
                    positive: {column: price, greater_or_equal: 0.5}
                    recent: {column: ts, max_past_ms: 60000}
                    present: {column: symbol, not_null: true}
            """
        let config = try await ConfigTests.withTemporaryFile(yaml) { try await TidegateConfig.load(path: $0, environment: [:]) }
        let batch = try #require(config.relations["ticks"]?.batch)
        #expect(batch.enabled && batch.ignoreConflicts)
        #expect(batch.policy == BatchPolicy(maxRows: 100, maxBytes: 65_536, maxDelayNanos: 2_000_000, maxConcurrent: 3))
        #expect(Set(batch.rules.map(\.name)) == ["positive", "recent", "present"])
        #expect(batch.rules.first { $0.name == "positive" }?.check == .greaterOrEqual(0.5))
        #expect(batch.rules.first { $0.name == "recent" }?.check == .maxPastMs(60_000))
        #expect(batch.rules.first { $0.name == "present" }?.check == .notNull)
    }

    @Test func badSettingsAreReported() async throws {
        let problems = try await ConfigTests.problems(
            ConfigTests.minimalYAML + """

                relations:
                  ticks:
                    batch:
                      on_conflict: update
                      max_rows: 0
                      rules:
                        nothing: {column: price}
                        two: {column: price, greater_than: 0, less_than: 10}
                        nocolumn: {greater_than: 0}
                """)
        #expect(problems.contains { $0.contains("on_conflict") && $0.contains("update") })
        #expect(problems.contains { $0.contains("batch.max_rows") })
        #expect(problems.contains { $0.contains("rules.nothing") && $0.contains("exactly one") })
        #expect(problems.contains { $0.contains("rules.two") && $0.contains("exactly one") })
        #expect(problems.contains { $0.contains("rules.nocolumn.column") })
    }
}
