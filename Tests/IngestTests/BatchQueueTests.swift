import Testing

@testable import Ingest

@Suite struct BatchQueueTests {
    let policy = BatchPolicy(maxRows: 10, maxBytes: 1_000, maxDelayNanos: 5_000_000, maxConcurrent: 2)

    @Test func anIdleGroupSendsAtOnce() {
        var queue = BatchQueue(policy: self.policy)
        #expect(queue.enqueued(rows: 1, bytes: 50, now: 0) == [.flush(statements: 1)])
        #expect(queue.inFlight == 1)
        #expect(queue.queuedStatements == 0)
    }

    @Test func rowsGatherWhileABatchCommits() {
        var queue = BatchQueue(policy: self.policy)
        _ = queue.enqueued(rows: 1, bytes: 50, now: 0)
        #expect(queue.enqueued(rows: 2, bytes: 50, now: 1_000) == [.armTimer(at: 5_001_000)])
        #expect(queue.enqueued(rows: 3, bytes: 50, now: 2_000) == [])
        #expect(queue.queuedRows == 5)
        // The commit ends: everything waiting goes as one batch.
        #expect(queue.flushFinished(now: 3_000) == [.flush(statements: 2)])
        #expect(queue.queuedRows == 0)
    }

    @Test func theDelayBoundsTheWait() {
        var queue = BatchQueue(policy: self.policy)
        _ = queue.enqueued(rows: 1, bytes: 50, now: 0)
        _ = queue.enqueued(rows: 1, bytes: 50, now: 1_000)
        #expect(queue.timerFired(now: 4_000_000) == [.armTimer(at: 5_001_000)])
        #expect(queue.timerFired(now: 5_001_000) == [.flush(statements: 1)])
        #expect(queue.inFlight == 2)
        // At the limit of concurrent batches, rows wait for a commit (no timer: the commit decides).
        #expect(queue.enqueued(rows: 1, bytes: 50, now: 6_000_000) == [])
        #expect(queue.enqueued(rows: 20, bytes: 50, now: 6_000_001) == [])
        // One commit ends: the next batch stops before max_rows; the rest waits for the next commit.
        #expect(queue.flushFinished(now: 7_000_000) == [.flush(statements: 1)])
        #expect(queue.queuedRows == 20)
        #expect(queue.flushFinished(now: 7_500_000) == [.flush(statements: 1)])
        #expect(queue.queuedRows == 0)
    }

    @Test func rowAndByteLimitsCutBatches() {
        var queue = BatchQueue(policy: self.policy)
        _ = queue.enqueued(rows: 1, bytes: 10, now: 0)
        for _ in 0..<4 { _ = queue.enqueued(rows: 3, bytes: 10, now: 10) }
        // 12 rows waiting, more than max_rows: a second batch goes at once with the first 3 statements (9 rows).
        #expect(queue.inFlight == 2)
        #expect(queue.queuedRows == 3)
        var bytes = BatchQueue(policy: self.policy)
        _ = bytes.enqueued(rows: 1, bytes: 10, now: 0)
        #expect(bytes.enqueued(rows: 1, bytes: 600, now: 1) == [.armTimer(at: 5_000_001)])
        #expect(bytes.enqueued(rows: 1, bytes: 600, now: 2) == [.flush(statements: 1)])
        #expect(bytes.queuedBytes == 600)
    }

    @Test func eagerBelowSendsWhileFewerCommit() {
        var queue = BatchQueue(policy: BatchPolicy(maxRows: 10, maxBytes: 1_000, maxDelayNanos: 5_000_000, maxConcurrent: 3, eagerBelow: 2))
        #expect(queue.enqueued(rows: 1, bytes: 10, now: 0) == [.flush(statements: 1)])
        #expect(queue.enqueued(rows: 1, bytes: 10, now: 1) == [.flush(statements: 1)])
        #expect(queue.enqueued(rows: 1, bytes: 10, now: 2) == [.armTimer(at: 5_000_002)])
        #expect(queue.inFlight == 2)
    }

    @Test func anOversizedStatementStillGoes() {
        var queue = BatchQueue(policy: self.policy)
        #expect(queue.enqueued(rows: 50, bytes: 5_000, now: 0) == [.flush(statements: 1)])
    }

    @Test func splittingIsolatesOneStatement() {
        var ranges = [0..<10_000]
        var statements = 0
        let bad = 7_777
        var isolated: [Int] = []
        while let range = ranges.popLast() {
            statements += 1
            guard range.contains(bad) else { continue }
            if let (a, b) = BatchSplit.halves(range) { ranges += [a, b] } else { isolated.append(range.lowerBound) }
        }
        #expect(isolated == [bad])
        #expect(statements <= 2 * 14 + 1)
    }
}
