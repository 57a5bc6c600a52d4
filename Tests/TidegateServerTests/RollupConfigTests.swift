import NIOCore
import Testing

@testable import TidegateServer

@Suite struct RollupConfigTests {
    @Test func onlyASCIITextsMentioningTimeBucketAreCandidates() {
        func candidate(_ text: String) -> Bool { LoopShard.mentionsTimeBucket(ByteBuffer(string: text)) }
        #expect(candidate("SELECT time_bucket('5 minutes', ts) FROM ticks"))
        #expect(candidate("select TIME_BUCKET('1 hour', ts)"))
        #expect(candidate("time_bucket"))
        #expect(!candidate("SELECT timebucket('5 minutes', ts)"))
        #expect(!candidate("SELECT time-bucket"))
        #expect(!candidate("SELECT 1"))
        #expect(!candidate(""))
        #expect(!candidate("SELECT time_bucket('5 minutes', ts) FROM ticks WHERE symbol = 'Zürich'"))
        #expect(!candidate("SELECT 'é', time_bucket('5 minutes', ts)"))
    }

    @Test func theRewriteIsOnForOneRelationAtMost() async throws {
        var config = TidegateConfig()
        #expect(config.rollupSchema == nil)
        var ticks = TidegateConfig.Relation(name: "trades")
        ticks.timeColumn = "at"
        ticks.rewrite = true
        config.relations = ["trades": ticks, "quotes": TidegateConfig.Relation(name: "quotes")]
        let schema = try #require(config.rollupSchema)
        #expect(schema.relation == "trades" && schema.timeColumn == "at" && schema.instrumentColumn == "symbol")
        #expect(schema.columns.contains("at"))
    }
}
