import Cache
import DequeModule
import Foundation
import Ingest
import Logging
import NIOCore
import PostgresWire
import SQLAnalysis
import Topology

/// How a client's statement ended in the batcher.
enum BatchOutcome {
    /// Committed: the rows inserted for it, and a primary WAL position read after its commit.
    case inserted(rows: Int, lsn: LSN?)
    /// Not inserted. `before` lists the messages a direct execution sent before the error (ParseComplete,
    /// BindComplete, NoData), so the client sees the same sequence.
    case failed(ErrorFields, before: [UInt8])
}

/// What a client sent, to run it as it is when it must be isolated or cannot be batched.
enum BatchOriginal {
    case simple(ByteBuffer)
    /// Parse of the text with the client's types, then the client's Bind (on the unnamed statement).
    case extended(query: ByteBuffer, parameterTypes: [UInt32], bind: PostgresFrame, portal: String)
}

/// One client statement waiting in, or committing with, a batch.
// @unchecked Sendable: created by a session and used only on its (and its batcher's) event loop.
final class BatchItem: @unchecked Sendable {
    /// Rows × slots: each value as the client sent it (constants as their text).
    let values: [[ByteBuffer?]]
    let bytes: Int
    let original: BatchOriginal
    /// The session's TimeZone (zone-less timestamp text is local time there).
    let zone: TimeZone?
    let enqueuedAt = NIODeadline.now()
    let done: @Sendable (BatchOutcome) -> Void
    var rowCount: Int { self.values.count }

    init(values: [[ByteBuffer?]], original: BatchOriginal, zone: TimeZone?, done: @escaping @Sendable (BatchOutcome) -> Void) {
        self.values = values
        var bytes = 64
        for row in values { for value in row { bytes += (value?.readableBytes ?? 0) + 4 } }
        self.bytes = bytes
        self.original = original
        self.zone = zone
        self.done = done
    }
}

/// Statements that share one batch statement: same database, role, settings, text shape, slot types and
/// formats.
struct BatchGroupKey: Hashable {
    var database: String
    var user: String
    var settings: [String]
    var template: String
    var binary: [Bool]
    var declared: [UInt32]
}

/// Where a rule's column comes from in a row.
enum RuleAccess {
    case slot(Int, oid: UInt32, binary: Bool)
    /// `to_timestamp(slot)`.
    case epochSeconds(Int, oid: UInt32, binary: Bool)
    /// An expression Tidegate does not compute.
    case uncomputable
}

/// The batch statement of a group, once the primary has described the clients' statement.
struct PreparedBatch {
    var sql: String
    var statementName: String
    var arrayOIDs: [UInt32]
    var slotOIDs: [UInt32]
    var rules: [(BatchRule, RuleAccess)]
    var cache: BatchCacheColumns?
    var ignoreConflicts: Bool
}

/// One group: its statements waiting, its flush decisions and its prepared statement.
// @unchecked Sendable: confined to its batcher's event loop.
final class BatchGroup: @unchecked Sendable {
    enum State {
        case preparing
        case ready(PreparedBatch)
        /// The statement cannot be batched (its reason): its statements run one by one as sent.
        case unbatchable(String)
    }

    let key: BatchGroupKey
    let shape: InsertShape
    let relation: TidegateConfig.Relation
    var state = State.preparing
    var queue: BatchQueue
    var items = Deque<BatchItem>()
    /// Statements that arrived while the group was being prepared.
    var waiting: [BatchItem] = []
    var timer: Scheduled<Void>?
    var lastUsed = NIODeadline.now()

    init(key: BatchGroupKey, shape: InsertShape, relation: TidegateConfig.Relation) {
        self.key = key
        self.shape = shape
        self.relation = relation
        self.queue = BatchQueue(policy: relation.batch.policy)
    }
}

/// Insert coalescing on one event loop: statements from this loop's sessions are buffered per group and
/// flushed to the primary as one statement per batch; each sender gets its result once the batch
/// committed (after the cache has been told what changed). A failing batch is split until the failing
/// statements are alone; those run as their senders sent them, so their senders get PostgreSQL's own error.
// @unchecked Sendable: confined to its shard's event loop, like the shard.
final class Batcher: @unchecked Sendable {
    unowned let shard: LoopShard
    let logger: Logger
    private var groups: [BatchGroupKey: BatchGroup] = [:]
    /// Bytes of statements waiting or committing, per relation.
    private var queuedBytes: [String: Int] = [:]
    /// Sessions waiting for room (the buffer was full), woken when batches finish.
    private var roomWaiters: [@Sendable () -> Void] = []
    static let maxGroups = 1_000

    init(shard: LoopShard, logger: Logger) {
        self.shard = shard
        self.logger = logger
    }

    var loop: any EventLoop { self.shard.loop }
    private var stats: BatchStatistics { self.shard.runtime.batchStats }

    enum Admission {
        case accepted
        /// The relation's buffer is full: call again once `whenRoom` fires.
        case full
        /// Too many distinct statement shapes: run it the normal way.
        case refused
    }

    /// Takes one statement. Its outcome arrives later through `item.done`, never from inside this call.
    func submit(_ item: BatchItem, key: BatchGroupKey, shape: InsertShape, relation: TidegateConfig.Relation) -> Admission {
        let queued = self.queuedBytes[relation.name, default: 0]
        if queued > 0 && queued + item.bytes > relation.batch.maxQueueBytes { return .full }
        let group: BatchGroup
        if let existing = self.groups[key] {
            group = existing
        } else {
            if self.groups.count >= Self.maxGroups { self.evictIdleGroups() }
            guard self.groups.count < Self.maxGroups else { return .refused }
            group = BatchGroup(key: key, shape: shape, relation: relation)
            self.groups[key] = group
            self.prepare(group)
        }
        group.lastUsed = .now()
        self.queuedBytes[relation.name, default: 0] += item.bytes
        self.stats.queued(database: key.database, relation: relation.name, loop: ObjectIdentifier(self), rows: item.rowCount, bytes: item.bytes)
        switch group.state {
        case .preparing:
            group.waiting.append(item)
        case .ready, .unbatchable:
            self.admit(item, to: group)
        }
        return .accepted
    }

    /// Runs `wake` once some buffered statements have finished.
    func whenRoom(_ wake: @escaping @Sendable () -> Void) { self.roomWaiters.append(wake) }

    private func evictIdleGroups() {
        let cutoff = NIODeadline.now() - .seconds(60)
        for (key, group) in self.groups
        where group.items.isEmpty && group.waiting.isEmpty && group.queue.inFlight == 0 && group.lastUsed < cutoff {
            group.timer?.cancel()
            self.groups.removeValue(forKey: key)
        }
    }

    /// A statement of a prepared group: checked against the rules, then queued.
    private func admit(_ item: BatchItem, to group: BatchGroup) {
        if case .ready(let prepared) = group.state, !prepared.rules.isEmpty {
            switch self.check(item, rules: prepared.rules, relation: group.relation.name, resolved: [:]) {
            case .accept:
                break
            case .reject(let rejection):
                self.stats.rejected(database: group.key.database, relation: group.relation.name)
                self.finish(item, group: group, outcome: .failed(rejection, before: []), later: true)
                return
            case .ask(let questions):
                // Text Tidegate cannot read (a DateStyle-dependent date, say): PostgreSQL reads it, under
                // the sender's settings, before the rule decides.
                self.resolve(questions, item: item, group: group, prepared: prepared)
                return
            }
        }
        self.enqueue(item, group: group)
    }

    private func enqueue(_ item: BatchItem, group: BatchGroup) {
        group.items.append(item)
        let actions = group.queue.enqueued(rows: item.rowCount, bytes: item.bytes, now: Self.now())
        self.perform(actions, group: group)
    }

    /// A row's value for one rule (by index).
    struct RuleCell: Hashable {
        var row: Int
        var rule: Int
    }

    /// A value a rule needs that PostgreSQL must read, with its type.
    struct RuleQuestion {
        var cell: RuleCell
        var value: ByteBuffer
        var oid: UInt32
        var time: Bool
    }

    enum RuleCheck {
        case accept
        case reject(ErrorFields)
        case ask([RuleQuestion])
    }

    private func resolve(_ questions: [RuleQuestion], item: BatchItem, group: BatchGroup, prepared: PreparedBatch) {
        let key = group.key
        self.withPrimary(database: key.database, user: key.user, settings: key.settings, since: .now()) { result in
            guard case .success((let server, let pool)) = result else {
                if case .failure(let error) = result { self.fail(item, group: group, Self.unavailable(error)) }
                return
            }
            var messages = ByteBuffer()
            for question in questions {
                let sql = question.time ? "SELECT extract(epoch FROM $1)::float8" : "SELECT ($1)::float8"
                BatchPipeline.appendStatement(&messages, sql, parameterTypes: [question.oid], values: [question.value])
            }
            BatchPipeline.run(messages, units: questions.count, on: server).whenComplete { result in
                switch result {
                case .success(let answers):
                    pool.release(server)
                    var resolved: [RuleCell: RuleValue?] = [:]
                    for (question, answer) in zip(questions, answers) {
                        if let error = answer.error {
                            // PostgreSQL refuses the value itself: the sender gets that error, as directly.
                            self.fail(item, group: group, error)
                            return
                        }
                        let number = answer.rows.first?.first.flatMap { $0.flatMap { Double($0) } }
                        resolved[question.cell] =
                            question.time ? number.flatMap(RuleValueReader.instant(seconds:)).map(RuleValue.instant) : number.map(RuleValue.number)
                    }
                    switch self.check(item, rules: prepared.rules, relation: group.relation.name, resolved: resolved) {
                    case .accept:
                        self.enqueue(item, group: group)
                    case .reject(let rejection):
                        self.stats.rejected(database: key.database, relation: group.relation.name)
                        self.finish(item, group: group, outcome: .failed(rejection, before: []))
                    case .ask(let more):
                        let raw = more.first.map { String(buffer: $0.value) } ?? ""
                        let rule = more.first.map { prepared.rules[$0.cell.rule].0 }
                        self.finish(
                            item, group: group,
                            outcome: .failed(self.unreadable(rule ?? prepared.rules[0].0, relation: group.relation.name, raw: ByteBuffer(string: raw), binary: false), before: []))
                    }
                case .failure(let error):
                    pool.discard(server)
                    self.fail(item, group: group, Self.unavailable(error))
                }
            }
        }
    }

    static func now() -> Int64 { Int64(NIODeadline.now().uptimeNanoseconds) }

    private func perform(_ actions: [BatchQueue.Action], group: BatchGroup) {
        for action in actions {
            switch action {
            case .flush(let count):
                var items: [BatchItem] = []
                items.reserveCapacity(count)
                for _ in 0..<count { if let item = group.items.popFirst() { items.append(item) } }
                self.flush(items, group: group)
            case .armTimer(let at):
                group.timer?.cancel()
                group.timer = self.loop.scheduleTask(deadline: .uptimeNanoseconds(UInt64(max(0, at)))) { [weak self, weak group] in
                    guard let self, let group else { return }
                    group.timer = nil
                    self.perform(group.queue.timerFired(now: Self.now()), group: group)
                }
            }
        }
    }

    // MARK: Rules

    /// Checks every row against the rules. `resolved` holds what PostgreSQL read for values Tidegate could
    /// not.
    private func check(
        _ item: BatchItem, rules: [(BatchRule, RuleAccess)], relation: String, resolved: [RuleCell: RuleValue?]
    ) -> RuleCheck {
        let now = CacheTier.nowMillis() * 1_000
        var questions: [RuleQuestion] = []
        for (rowIndex, row) in item.values.enumerated() {
            for (ruleIndex, (rule, access)) in rules.enumerated() {
                var value: RuleValue?
                let slot: Int
                switch access {
                case .slot(let index, let oid, let binary):
                    slot = index
                    guard let raw = row[index] else { break }
                    let cell = RuleCell(row: rowIndex, rule: ruleIndex)
                    if let known = resolved[cell] {
                        value = known
                    } else if rule.isTimeRule {
                        value = RuleValueReader.instant(raw, oid: oid, binary: binary, zone: item.zone).map(RuleValue.instant)
                    } else {
                        value = RuleValueReader.number(raw, oid: oid, binary: binary).map(RuleValue.number)
                    }
                    if value == nil {
                        guard !binary, resolved[cell] == nil else {
                            return .reject(self.unreadable(rule, relation: relation, raw: raw, binary: binary))
                        }
                        questions.append(RuleQuestion(cell: cell, value: raw, oid: oid, time: rule.isTimeRule))
                        continue
                    }
                case .epochSeconds(let index, let oid, let binary):
                    slot = index
                    guard let raw = row[index] else { break }
                    guard let seconds = RuleValueReader.number(raw, oid: oid, binary: binary),
                        let instant = RuleValueReader.instant(seconds: seconds)
                    else { return .reject(self.unreadable(rule, relation: relation, raw: raw, binary: binary)) }
                    value = rule.isTimeRule ? .instant(instant) : .number(seconds)
                case .uncomputable:
                    return .reject(
                        ErrorFields(
                            severity: "ERROR", sqlState: "23514",
                            message: "new row for relation \"\(relation)\" cannot be checked against rule \"\(rule.name)\"",
                            detail: "Tidegate computes \(rule.column) only from a value, a cast of one, or to_timestamp(value).",
                            hint: "Send \(rule.column) as a value, or remove the rule."))
                }
                if !rule.accepts(value, nowMicros: now) {
                    let shown = row[slot].map { Self.shown($0, access: access) } ?? "NULL"
                    return .reject(
                        ErrorFields(
                            severity: "ERROR", sqlState: "23514",
                            message: "new row for relation \"\(relation)\" violates rule \"\(rule.name)\"",
                            detail: "The rule asks for \(rule.text); the row has \(rule.column) = \(shown).",
                            hint: "Rules are set under relations.\(relation).batch.rules in Tidegate's configuration."))
                }
            }
        }
        return questions.isEmpty ? .accept : .ask(questions)
    }

    /// A value as a rule message shows it.
    private static func shown(_ raw: ByteBuffer, access: RuleAccess) -> String {
        switch access {
        case .uncomputable:
            return "(an expression)"
        case .slot(_, let oid, let binary), .epochSeconds(_, let oid, let binary):
            guard binary else { return String(buffer: raw) }
            if let number = RuleValueReader.number(raw, oid: oid, binary: true) { return BatchRuleText.number(number) }
            if let instant = RuleValueReader.instant(raw, oid: oid, binary: true, zone: nil) {
                return BatchRuleText.instant(instant)
            }
            return "(binary value)"
        }
    }

    private func unreadable(_ rule: BatchRule, relation: String, raw: ByteBuffer, binary: Bool) -> ErrorFields {
        ErrorFields(
            severity: "ERROR", sqlState: "23514",
            message: "new row for relation \"\(relation)\" cannot be checked against rule \"\(rule.name)\"",
            detail: binary
                ? "Tidegate reads binary int2, int4, int8, float4, float8, numeric, timestamp and timestamptz values only."
                : "Tidegate could not read \"\(String(buffer: raw))\" as \(rule.isTimeRule ? "an ISO 8601 timestamp (YYYY-MM-DD HH:MM:SS, with a zone or in the session's TimeZone)" : "a number").",
            hint: "Send \(rule.column) as a number or an ISO timestamp, or remove the rule.")
    }

    // MARK: Preparing a group

    /// Describes the clients' statement on the primary (the slots' types), then finds their array types and
    /// the relation's columns and primary key, and builds the batch statement.
    private func prepare(_ group: BatchGroup) {
        let key = group.key
        let shape = group.shape
        self.withPrimary(database: key.database, user: key.user, settings: key.settings, since: .now()) { result in
            guard case .success((let server, let pool)) = result else {
                if case .failure(let error) = result { self.prepared(group, .failure(error)) }
                return
            }
            var messages = ByteBuffer()
            FrontendEncoder.parse(&messages, name: "", query: BatchStatement.templateSQL(shape: shape), parameterTypes: key.declared)
            FrontendEncoder.describe(&messages, kind: UInt8(ascii: "S"), name: "")
            FrontendEncoder.sync(&messages)
            let catalogSQL = """
                SELECT a.attname, format_type(a.atttypid, a.atttypmod), coalesce(a.attnum = ANY(i.indkey), false) \
                FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
                """
            BatchPipeline.appendStatement(&messages, catalogSQL, parameterTypes: [25], values: [ByteBuffer(string: shape.qualifiedName)])
            BatchPipeline.run(messages, units: 2, on: server).flatMap { results -> EventLoopFuture<(PipelineUnitResult, PipelineUnitResult, [PipelineUnitResult])> in
                self.logger.trace("batch statement described", metadata: ["results": "\(results)"])
                guard let types = results[0].parameterTypes, results[0].error == nil, results[1].error == nil else {
                    return self.loop.makeSucceededFuture((results[0], results[1], []))
                }
                var lookup = ByteBuffer()
                BatchPipeline.appendStatement(
                    &lookup, "SELECT oid, typarray, typdelim FROM pg_type WHERE oid = ANY($1::oid[])",
                    values: [ByteBuffer(string: "{" + types.map(String.init).joined(separator: ",") + "}")])
                return BatchPipeline.run(lookup, units: 1, on: server).map { (results[0], results[1], $0) }
            }.whenComplete { result in
                switch result {
                case .success((let described, let catalog, let arrays)):
                    pool.release(server)
                    self.prepared(group, .success(self.build(group, described: described, catalog: catalog, arrays: arrays.first)))
                case .failure(let error):
                    pool.discard(server)
                    self.prepared(group, .failure(error))
                }
            }
        }
    }

    private func build(
        _ group: BatchGroup, described: PipelineUnitResult, catalog: PipelineUnitResult, arrays: PipelineUnitResult?
    ) -> BatchGroup.State {
        if let error = described.error ?? catalog.error {
            return .unbatchable("the primary refused the statement: \(error.message ?? "")")
        }
        guard let slotOIDs = described.parameterTypes, slotOIDs.count == group.shape.slotClasses.count, let arrays, arrays.error == nil
        else { return .unbatchable("the statement's parameter types are unknown") }
        var arrayOf: [UInt32: UInt32] = [:]
        for row in arrays.rows {
            guard row.count == 3, let oid = row[0].flatMap({ UInt32($0) }), let array = row[1].flatMap({ UInt32($0) }) else { continue }
            if row[2] != "," { continue }
            if array != 0 { arrayOf[oid] = array }
        }
        var arrayOIDs: [UInt32] = []
        for oid in slotOIDs {
            guard let array = arrayOf[oid] else {
                let isArray = arrays.rows.contains { $0.count == 3 && $0[0] == "\(oid)" && $0[1] == "0" }
                return .unbatchable(
                    isArray
                        ? "a value of type \(oid) is an array (arrays of arrays are not sent)"
                        : "type \(oid) has no array type with a comma delimiter")
            }
            arrayOIDs.append(array)
        }
        // The columns each item goes to, by the list or the table's order.
        let tableColumns = catalog.rows.compactMap { row -> (name: String, type: String, key: Bool)? in
            guard row.count == 3, let name = row[0], let type = row[1] else { return nil }
            return (name, type, row[2] == "t")
        }
        let shape = group.shape
        let itemColumns = shape.columns.isEmpty ? Array(tableColumns.prefix(shape.items.count).map(\.name)) : shape.columns
        func item(of column: String) -> Int? { itemColumns.firstIndex(of: column) }
        let batch = group.relation.batch
        var keyColumns: [BatchKeyColumn] = []
        if batch.ignoreConflicts {
            let key = tableColumns.filter(\.key)
            guard !key.isEmpty else { return .unbatchable("on_conflict: ignore needs a primary key") }
            for column in key {
                guard let index = item(of: column.name) else {
                    return .unbatchable("the statement does not set key column \(column.name)")
                }
                keyColumns.append(BatchKeyColumn(name: column.name, item: index, type: column.type))
            }
        }
        var rules: [(BatchRule, RuleAccess)] = []
        for rule in batch.rules {
            guard let index = item(of: rule.column) else {
                if tableColumns.contains(where: { $0.name == rule.column }) { continue }  // defaulted: not the client's value
                return .unbatchable("rule \(rule.name) names column \(rule.column), which the relation does not have")
            }
            let binary = { (slot: Int) in group.key.binary[slot] }
            switch shape.items[index] {
            case .slot(let slot), .cast(.slot(let slot), _):
                rules.append((rule, .slot(slot, oid: slotOIDs[slot], binary: binary(slot))))
            case .call(_, let name, let arguments) where (name == "to_timestamp" || name == "pg_catalog.to_timestamp") && arguments.count == 1:
                guard case .slot(let slot) = arguments[0] else { fallthrough }
                rules.append((rule, .epochSeconds(slot, oid: slotOIDs[slot], binary: binary(slot))))
            default:
                // The rule must not be skipped: statements of this shape are rejected, saying why.
                rules.append((rule, .uncomputable))
            }
        }
        var cache: BatchCacheColumns?
        if self.shard.cacheTier != nil, group.relation.cache {
            let relation = group.relation
            if tableColumns.contains(where: { $0.name == relation.timeColumn }) && tableColumns.contains(where: { $0.name == relation.instrumentColumn }) {
                cache = BatchCacheColumns(
                    timeColumn: relation.timeColumn, instrumentColumn: relation.instrumentColumn, bucketMicros: Int64(relation.bucketMs) * 1_000)
            }
        }
        let sql = BatchStatement.sql(shape: shape, ignoreConflicts: batch.ignoreConflicts, key: keyColumns, cache: cache)
        if batch.ignoreConflicts { arrayOIDs.append(1007) }  // int4[]: each row's statement
        var hash = FNV1a64()
        for byte in sql.utf8 { hash.add(byte) }
        for oid in arrayOIDs {
            for shift in stride(from: 0, to: 32, by: 8) { hash.add(UInt8(truncatingIfNeeded: oid >> UInt32(shift))) }
        }
        return .ready(
            PreparedBatch(
                sql: sql, statementName: "tg_batch_" + String(hash.value, radix: 36), arrayOIDs: arrayOIDs, slotOIDs: slotOIDs, rules: rules,
                cache: cache, ignoreConflicts: batch.ignoreConflicts))
    }

    private func prepared(_ group: BatchGroup, _ result: Result<BatchGroup.State, any Error>) {
        self.logger.trace("batch group prepared", metadata: ["result": "\(result)"])
        switch result {
        case .success(let state):
            group.state = state
            if case .unbatchable(let reason) = state {
                self.logger.info(
                    "statement shape not batched; its statements run as sent",
                    metadata: ["relation": "\(group.relation.name)", "reason": "\(reason)"])
                self.stats.unbatchable(database: group.key.database, relation: group.relation.name, reason: reason)
            }
            let waiting = group.waiting
            group.waiting = []
            for item in waiting { self.admit(item, to: group) }
        case .failure(let error):
            // No primary (or it went away): the waiting statements fail; the next statement tries again.
            let fields = Self.unavailable(error)
            self.groups.removeValue(forKey: group.key)
            let waiting = group.waiting
            group.waiting = []
            for item in waiting { self.fail(item, group: group, fields) }
        }
    }

    static func unavailable(_ error: any Error) -> ErrorFields {
        switch error {
        case let error as TidegateError:
            var fields = error.clientFields
            // An error for the statement, not the end of the client's connection.
            for index in fields.fields.indices where fields.fields[index].code == UInt8(ascii: "S") || fields.fields[index].code == UInt8(ascii: "V") {
                fields.fields[index].value = "ERROR"
            }
            return fields
        case BatchPipelineError.connectionLost(sent: true):
            return ErrorFields(
                severity: "ERROR", sqlState: "08007",
                message: "the connection to the primary was lost while the batch with this statement was committing",
                detail: "Whether its rows were committed is unknown.",
                hint: "Check for the rows before sending them again (or use on_conflict: ignore on the natural key).")
        case let error as BatchWaitError:
            return ErrorFields(severity: "ERROR", sqlState: "57P03", message: error.message)
        default:
            return ErrorFields(severity: "ERROR", sqlState: "08006", message: "the primary is unreachable: \(error)")
        }
    }

    // MARK: The primary

    struct BatchWaitError: Error { var message: String }

    /// A connection to the primary for (database, user) with `settings` applied. With no primary, or one that
    /// cannot be reached, it tries again until `routing.failover_wait_ms` since `since` has passed.
    private func withPrimary(
        database: String, user: String, settings: [String], since: NIODeadline,
        _ body: @escaping @Sendable (Result<(ServerConnection, ServerPool), any Error>) -> Void
    ) {
        let config = self.shard.config
        let waitLimit = since + .milliseconds(Int64(config.routing.failoverWaitMs))
        let retry: @Sendable (String) -> Void = { why in
            guard NIODeadline.now() + .milliseconds(100) < waitLimit else {
                body(.failure(BatchWaitError(message: "no primary to commit the batch: \(why) (waited \(config.routing.failoverWaitMs) ms)")))
                return
            }
            self.loop.scheduleTask(in: .milliseconds(100)) {
                self.withPrimary(database: database, user: user, settings: settings, since: since, body)
            }
        }
        guard let primary = self.shard.topology.primary ?? (self.shard.routes ? nil : config.nodes.first?.name) else {
            return retry("no primary is known")
        }
        let pool = self.shard.pool(for: PoolKey(database: database, user: user, node: primary))
        pool.checkout().flatMap { server in
            pool.prepare(server, settings: settings)
        }.whenComplete { result in
            switch result {
            case .success(let server):
                body(.success((server, pool)))
            case .failure(let error):
                if ClientSession.isConnectionFailure(error) {
                    self.shard.markSuspect(primary)
                    retry("the primary \(primary) is unreachable (\(error))")
                } else {
                    body(.failure(error))
                }
            }
        }
    }

    // MARK: Flushing

    /// What one round of a flush sends: batches of item ranges, and statements run as sent.
    enum Unit {
        case batch(Range<Int>)
        case original(Int)
    }

    /// Sends `items` as one batch (or, for an unbatchable group, each as sent), isolating failures round by
    /// round, then reports every outcome.
    private func flush(_ items: [BatchItem], group: BatchGroup) {
        let started = NIODeadline.now()
        let firstUnits: [Unit]
        if case .ready = group.state {
            firstUnits = [.batch(0..<items.count)]
        } else {
            firstUnits = items.indices.map { .original($0) }
        }
        let run = FlushRun(items: items, group: group)
        self.stats.flushed(
            database: group.key.database, relation: group.relation.name, rows: items.reduce(0) { $0 + $1.rowCount },
            delayNanos: (started - (items.first?.enqueuedAt ?? started)).nanoseconds)
        self.withPrimary(database: group.key.database, user: group.key.user, settings: group.key.settings, since: started) { result in
            switch result {
            case .success((let server, let pool)):
                self.sendRound(run, units: firstUnits, prepared: self.prepared(group), server: server, pool: pool)
            case .failure(let error):
                self.finishRun(run, failure: Self.unavailable(error), lsn: nil)
            }
        }
    }

    // @unchecked Sendable: confined to the batcher's event loop.
    final class FlushRun: @unchecked Sendable {
        let items: [BatchItem]
        let group: BatchGroup
        var inserted: [Int?]
        var failures: [Int: (ErrorFields, [UInt8])] = [:]
        var changed: [ChangedRow] = []
        /// A statement ran as sent: which rows it wrote is unknown to the cache.
        var wroteUnknownRows = false
        var started = NIODeadline.now()

        init(items: [BatchItem], group: BatchGroup) {
            self.items = items
            self.group = group
            self.inserted = Array(repeating: nil, count: items.count)
        }
    }

    private func sendRound(_ run: FlushRun, units: [Unit], prepared: PreparedBatch?, server: ServerConnection, pool: ServerPool) {
        // Without a batch statement every statement runs as sent (one unit each: the replies are counted).
        let units = prepared != nil ? units : units.flatMap { unit -> [Unit] in
            if case .batch(let range) = unit { return range.map { .original($0) } }
            return [unit]
        }
        var messages = ByteBuffer()
        for unit in units {
            switch unit {
            case .batch(let range):
                guard let prepared else { continue }  // expanded above
                if !server.touchPrepared(prepared.statementName) {
                    FrontendEncoder.parse(&messages, name: prepared.statementName, query: prepared.sql, parameterTypes: prepared.arrayOIDs)
                    server.prepared[prepared.statementName] = server.useTick
                }
                let (formats, values) = self.arrays(run.items[range], prepared: prepared, binary: run.group.key.binary, firstIndex: range.lowerBound)
                FrontendEncoder.bind(&messages, portal: "", statement: prepared.statementName, parameterFormats: formats, values: values, resultFormats: [])
                FrontendEncoder.execute(&messages, portal: "")
                FrontendEncoder.sync(&messages)
            case .original(let index):
                switch run.items[index].original {
                case .simple(let query):
                    messages.writePostgresMessage(id: FrontendMessageID.query.rawValue) {
                        $0.writeImmutableBuffer(query)
                        $0.writeInteger(UInt8(0))
                    }
                case .extended(let query, let types, let bind, let portal):
                    FrontendEncoder.parse(&messages, name: "", queryBytes: query, parameterTypes: types)
                    messages.writeImmutableBuffer(bind.raw)
                    FrontendEncoder.execute(&messages, portal: portal)
                    FrontendEncoder.sync(&messages)
                }
            }
        }
        // The primary's WAL position after the commits: read-your-writes (with replicas) and the cache's
        // versions.
        let askLSN = self.shard.routes || (self.shard.cacheTier != nil && run.group.relation.cache)
        if askLSN { FrontendEncoder.query(&messages, "SELECT pg_current_wal_lsn()") }
        BatchPipeline.run(messages, units: units.count + (askLSN ? 1 : 0), on: server).whenComplete { result in
            switch result {
            case .success(let results):
                var next: [Unit] = []
                for (unit, unitResult) in zip(units, results) {
                    self.record(unit, unitResult, run: run, prepared: prepared, next: &next)
                }
                let lsn = askLSN ? results.last?.rows.first?.first.flatMap { $0.flatMap { LSN($0) } } : nil
                if next.isEmpty {
                    pool.release(server)
                    self.finishRun(run, failure: nil, lsn: lsn)
                } else {
                    self.sendRound(run, units: next, prepared: prepared, server: server, pool: pool)
                }
            case .failure(let error):
                pool.discard(server)
                self.finishRun(run, failure: Self.unavailable(error), lsn: nil)
            }
        }
    }

    /// The arrays of a batch: one per slot (+ each row's statement index under on_conflict: ignore).
    private func arrays(
        _ items: ArraySlice<BatchItem>, prepared: PreparedBatch, binary: [Bool], firstIndex: Int
    ) -> ([Int16], [ByteBuffer?]) {
        let slots = prepared.slotOIDs.count
        var rows = 0
        for item in items { rows += item.rowCount }
        var arrays = (0..<slots).map { ArrayParameter(elementOID: prepared.slotOIDs[$0], binary: binary[$0], capacity: rows * 16) }
        var itemIndexes = ArrayParameter(elementOID: 23, binary: true, capacity: rows * 8 + 20)
        var formats: [Int16] = binary.map { $0 ? 1 : 0 }
        for (offset, item) in items.enumerated() {
            for row in item.values {
                for slot in 0..<slots { arrays[slot].append(slot < row.count ? row[slot] : nil) }
                if prepared.ignoreConflicts {
                    var value = ByteBuffer()
                    value.writeInteger(Int32(firstIndex + offset))
                    itemIndexes.append(value)
                }
            }
        }
        var values: [ByteBuffer?] = arrays.map { $0.finished() }
        if prepared.ignoreConflicts {
            values.append(itemIndexes.finished())
            formats.append(1)
        }
        return (formats, values)
    }

    static func isolatable(_ fields: ErrorFields) -> Bool {
        guard let state = fields.sqlState else { return false }
        return state.hasPrefix("22") || state.hasPrefix("23") || state.hasPrefix("P0") || state.hasPrefix("40") || state.hasPrefix("54")
            || state == "57014" || state.hasPrefix("42P10") || state == "2BP01" || state.hasPrefix("44")
    }

    private func record(_ unit: Unit, _ result: PipelineUnitResult, run: FlushRun, prepared: PreparedBatch?, next: inout [Unit]) {
        switch unit {
        case .batch(let range):
            if let error = result.error {
                if range.count == 1 {
                    next.append(.original(range.lowerBound))
                } else if Self.isolatable(error), let (first, second) = BatchSplit.halves(range) {
                    next.append(.batch(first))
                    next.append(.batch(second))
                } else {
                    // Not about a row (permissions, a changed table…): each statement as sent, and the next
                    // statement of this shape describes it again.
                    next.append(contentsOf: range.map { Unit.original($0) })
                    if self.groups[run.group.key] === run.group { self.groups.removeValue(forKey: run.group.key) }
                }
                return
            }
            guard let prepared else { return }
            var total = 0
            var perItem: [Int: Int] = [:]
            for row in result.rows where row.count == 4 {
                let count = row[3].flatMap { Int($0) } ?? 0
                if row[0] == "t" {
                    total += count
                    let instrument = row[1]
                    let instant = row[2].flatMap { Int64($0) }.map { $0 * (prepared.cache?.bucketMicros ?? 1) }
                    run.changed.append(ChangedRow(relation: run.group.relation.name, instant: instant, instrument: instrument))
                } else if row[0] == "i", let index = row[1].flatMap({ Int($0) }) {
                    perItem[index] = count
                }
            }
            if prepared.ignoreConflicts {
                for index in range { run.inserted[index] = perItem[index] ?? 0 }
                return
            }
            if prepared.cache == nil, let tag = result.tags.last, let n = Int(tag.split(separator: " ").last ?? "") { total = n }
            var remaining = total
            let rows = range.reduce(0) { $0 + run.items[$1].rowCount }
            if total != rows {
                self.logger.warning(
                    "a batch inserted another number of rows than it was sent (a trigger?); counts are given in order",
                    metadata: ["relation": "\(run.group.relation.name)", "sent": "\(rows)", "inserted": "\(total)"])
            }
            for index in range {
                let count = min(run.items[index].rowCount, remaining)
                run.inserted[index] = count
                remaining -= count
            }
        case .original(let index):
            if let error = result.error {
                run.failures[index] = (error, result.messages.filter { $0 != BackendMessageID.commandComplete.rawValue })
            } else {
                let tag = result.tags.last ?? ""
                run.inserted[index] = Int(tag.split(separator: " ").last ?? "") ?? 0
                run.wroteUnknownRows = true
            }
        }
    }

    /// Tells the cache what the batch wrote, then every sender its outcome.
    private func finishRun(_ run: FlushRun, failure: ErrorFields?, lsn: LSN?) {
        let group = run.group
        let database = group.key.database
        let relation = group.relation.name
        let outcomes: [BatchOutcome] = run.items.indices.map { index in
            if let inserted = run.inserted[index] { return .inserted(rows: inserted, lsn: lsn) }
            if let (fields, before) = run.failures[index] { return .failed(fields, before: before) }
            return .failed(failure ?? Self.unavailable(BatchPipelineError.connectionLost(sent: true)), before: [])
        }
        var inserted = 0
        var duplicates = 0
        var errors = 0
        for (item, outcome) in zip(run.items, outcomes) {
            switch outcome {
            case .inserted(let rows, _):
                inserted += rows
                if group.relation.batch.ignoreConflicts { duplicates += item.rowCount - rows }
            case .failed:
                errors += 1
            }
        }
        self.stats.committed(
            database: database, relation: relation, rows: inserted, duplicates: duplicates, errors: errors,
            commitNanos: (NIODeadline.now() - run.started).nanoseconds)
        let complete: @Sendable () -> Void = {
            for (item, outcome) in zip(run.items, outcomes) { self.finish(item, group: group, outcome: outcome) }
            self.perform(group.queue.flushFinished(now: Self.now()), group: group)
        }
        guard let tier = self.shard.cacheTier, group.relation.cache, inserted > 0 || run.wroteUnknownRows else { return complete() }
        let loop = self.loop
        let applied: EventLoopFuture<Void>
        if let lsn {
            let commit = ReplicationCommit(
                commitLSN: lsn, endLSN: lsn, commitTime: CacheTier.nowMillis() * 1_000, rows: run.changed,
                wholeRelations: run.wroteUnknownRows || (prepared(group)?.cache == nil) ? [relation] : [])
            applied = tier.apply(commit, database: database, on: loop)
        } else {
            applied = loop.makeFailedFuture(BatchWaitError(message: "no WAL position"))
        }
        applied.flatMapError { error -> EventLoopFuture<Void> in
            self.logger.warning("batch invalidation did not reach the cache; replacing the cache generation", metadata: ["error": "\(error)"])
            return tier.replaceGeneration(on: loop).flatMapError { _ in loop.makeSucceededVoidFuture() }
        }.whenComplete { _ in complete() }
    }

    private func prepared(_ group: BatchGroup) -> PreparedBatch? {
        if case .ready(let prepared) = group.state { return prepared }
        return nil
    }

    /// A statement that fails outside a batch (its group could not be prepared, PostgreSQL refused a value a
    /// rule needed): counted as an error.
    private func fail(_ item: BatchItem, group: BatchGroup, _ fields: ErrorFields) {
        self.stats.failed(database: group.key.database, relation: group.relation.name)
        self.finish(item, group: group, outcome: .failed(fields, before: []))
    }

    /// Reports a statement's outcome. `later`: the sender may still be inside `submit` (a rule rejected the
    /// statement at once), so the outcome goes out on the next loop tick.
    private func finish(_ item: BatchItem, group: BatchGroup, outcome: BatchOutcome, later: Bool = false) {
        self.queuedBytes[group.relation.name, default: 0] -= item.bytes
        self.stats.dequeued(database: group.key.database, relation: group.relation.name, loop: ObjectIdentifier(self), rows: item.rowCount, bytes: item.bytes)
        if later {
            self.loop.execute { item.done(outcome) }
        } else {
            item.done(outcome)
        }
        if !self.roomWaiters.isEmpty {
            let waiters = self.roomWaiters
            self.roomWaiters = []
            self.loop.execute { for wake in waiters { wake() } }
        }
    }

    /// Nothing waits or commits.
    var isIdle: Bool { self.queuedBytes.values.allSatisfy { $0 <= 0 } }

    func stop() {
        for group in self.groups.values { group.timer?.cancel() }
    }
}

/// Values in rule messages.
enum BatchRuleText {
    static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }

    static func instant(_ micros: Int64) -> String {
        let date = Date(timeIntervalSince1970: Double(micros) / 1_000_000)
        return ISO8601DateFormatter().string(from: date)
    }
}
