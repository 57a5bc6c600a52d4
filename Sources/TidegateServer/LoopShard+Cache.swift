import Cache
import NIOCore
import SQLAnalysis

/// What a statement may do to cached relations, for invalidation after its transaction ends.
enum CacheWriteEffect: Equatable {
    case none
    /// These relations, rows unknown: their epochs move.
    case relations(Set<String>)
    /// Anything (a function that may write, DO, CALL, EXECUTE of a statement Tidegate did not see prepared).
    case all
}

/// The syntactic part of a statement's cache write effect, memoized per text; functions are checked against
/// the database's catalog on use.
struct CacheWriteProfile {
    var relations: Set<String>
    var all: Bool
    /// Functions a read calls: if one may write, the effect is `.all`.
    var functions: [String]
}

extension LoopShard {
    /// The cache profile of a query text (memoized per text; cleared when the cached relations change).
    func cacheProfile(_ query: ByteBuffer) -> CacheProfile {
        if let profile = self.cacheProfileMemo[query] { return profile }
        let profile = CacheAnalyzer.analyze(String(buffer: query), relations: self.config.cachedRelations)
        if self.cacheProfileMemo.count >= Self.profileMemoLimit { self.cacheProfileMemo.removeAll(keepingCapacity: true) }
        self.cacheProfileMemo[ByteBuffer(bytes: query.readableBytesView)] = profile
        return profile
    }

    /// Which cached relations a statement may write.
    func cacheWriteEffect(_ query: ByteBuffer, database: String, user: String) -> CacheWriteEffect {
        let profile: CacheWriteProfile
        if let known = self.cacheWriteMemo[query] {
            profile = known
        } else {
            profile = Self.writeProfile(String(buffer: query), cached: Set(self.config.cachedRelations.keys))
            if self.cacheWriteMemo.count >= Self.profileMemoLimit { self.cacheWriteMemo.removeAll(keepingCapacity: true) }
            self.cacheWriteMemo[ByteBuffer(bytes: query.readableBytesView)] = profile
        }
        if profile.all { return .all }
        if !profile.functions.isEmpty {
            let primary = self.topology.primary ?? (self.routes ? nil : self.config.nodes.first?.name)
            // Without the catalog a function cannot be shown not to write.
            guard case .loaded(let catalog) = self.functionCatalog(database: database, user: user, primary: primary) else { return .all }
            if !profile.functions.allSatisfy({ catalog.isSafe($0) }) { return .all }
        }
        return profile.relations.isEmpty ? .none : .relations(profile.relations)
    }

    static let harmlessUtilities: Set<String> = [
        "DeallocateStmt", "DiscardStmt", "ListenStmt", "UnlistenStmt", "NotifyStmt", "VacuumStmt", "CheckPointStmt",
        "LockStmt", "PrepareStmt", "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt", "LoadStmt", "ConstraintsSetStmt",
    ]

    static func writeProfile(_ sql: String, cached: Set<String>) -> CacheWriteProfile {
        guard let analysis = try? QueryAnalyzer.analyze(sql) else {
            // The server rejects what does not parse: it writes nothing.
            return CacheWriteProfile(relations: [], all: false, functions: [])
        }
        func unqualified(_ name: String) -> String { name.split(separator: ".").last.map(String.init) ?? name }
        var relations = Set(analysis.relationsWritten.map(unqualified)).intersection(cached)
        var all = false
        var functions: [String] = []
        for (kind, type) in zip(analysis.kinds, analysis.statementTypes) {
            switch kind {
            case .ddl:
                relations.formUnion(Set(analysis.relationsRead.map(unqualified)).intersection(cached))
                relations.formUnion(Set(analysis.relationsWritten.map(unqualified)).intersection(cached))
                // DDL that names no relation (CREATE FUNCTION, ALTER … RENAME of a schema) changes nothing cached;
                // DROP SCHEMA … CASCADE is rare enough to leave to the listener.
            case .utility:
                // Statements that change no table data; anything else (DO, CALL, EXECUTE…) may write anything.
                if !Self.harmlessUtilities.contains(type) { all = true }
            case .read, .show, .write, .copyIn, .copyOut:
                functions.append(contentsOf: analysis.functions)
            case .transaction, .set:
                break
            }
        }
        return CacheWriteProfile(relations: relations, all: all, functions: Array(Set(functions)).sorted())
    }
}
