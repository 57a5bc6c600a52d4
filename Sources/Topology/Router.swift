/// What a health probe learned about one node; roles are discovered, never configured.
public struct NodeSnapshot: Sendable, Equatable {
    public enum Role: String, Sendable { case primary, replica, unknown }
    public enum State: String, Sendable { case up, lagging, down, draining }

    public var name: String
    public var region: String
    public var role: Role
    public var state: State
    /// Replica: replay position. Primary: current WAL position.
    public var lsn: LSN?
    /// Replication lag in seconds (replicas), when known.
    public var lagSeconds: Double?
    /// Replication lag in bytes of WAL behind the primary (replicas), when known.
    public var lagBytes: UInt64?
    /// Statements in flight on this node (least busy first).
    public var inFlight: Int

    public init(
        name: String, region: String, role: Role, state: State, lsn: LSN? = nil, lagSeconds: Double? = nil,
        lagBytes: UInt64? = nil, inFlight: Int = 0
    ) {
        self.lagBytes = lagBytes
        self.name = name
        self.region = region
        self.role = role
        self.state = state
        self.lsn = lsn
        self.lagSeconds = lagSeconds
        self.inFlight = inFlight
    }
}

/// A statement to place.
public struct RoutingRequest: Sendable, Equatable {
    public enum Hint: Sendable, Equatable {
        case none
        case primary
        case replica
    }

    /// True only for a provably read-only statement outside a read-write transaction.
    public var readOnly: Bool
    /// The client's region (its own choice, or the proxy's).
    public var region: String
    /// Read-your-writes: the replica must have replayed at least this far.
    public var minimumLSN: LSN?
    /// The largest replication lag the client accepts.
    public var maxLagSeconds: Double
    /// The largest lag in WAL bytes the client accepts (nil: no limit).
    public var maxLagBytes: UInt64?
    /// Nodes not to use (a read being retried after one of them failed).
    public var excluded: Set<String> = []
    public var hint: Hint
    /// A region named by a hint, tried first.
    public var hintRegion: String?

    public init(
        readOnly: Bool, region: String, minimumLSN: LSN? = nil, maxLagSeconds: Double, hint: Hint = .none,
        hintRegion: String? = nil
    ) {
        self.readOnly = readOnly
        self.region = region
        self.minimumLSN = minimumLSN
        self.maxLagSeconds = maxLagSeconds
        self.hint = hint
        self.hintRegion = hintRegion
    }
}

public struct RoutingDecision: Sendable, Equatable {
    public enum Reason: String, Sendable {
        case write, hintPrimary, regionalReplica, fallbackReplica, noReplicaPrimary, splitBrain, noPrimary
    }

    /// The node to use, or nil when none can take the statement (writes during failover or split-brain).
    public var node: String?
    public var reason: Reason
}

/// The pure routing decision: writes and anything not provably read-only to the primary; reads to an
/// up replica within the lag limit and past the client's last write, in the client's region first,
/// then the fallback regions in order, least busy first; then the primary.
public enum Router {
    public static func decide(
        _ request: RoutingRequest, nodes: [NodeSnapshot], fallbackRegions: [String]
    ) -> RoutingDecision {
        // One pass over the nodes (there are few): no intermediate arrays on this per-transaction path.
        var primaries = 0
        var primary: NodeSnapshot?
        for node in nodes where node.role == .primary && node.state != .down {
            primaries += 1
            if primary == nil && node.state != .draining && !request.excluded.contains(node.name) { primary = node }
        }
        if primaries > 1 { return RoutingDecision(node: nil, reason: .splitBrain) }
        guard request.readOnly, request.hint != .primary else {
            let reason: RoutingDecision.Reason = request.hint == .primary && request.readOnly ? .hintPrimary : .write
            return RoutingDecision(node: primary?.name, reason: primary == nil ? .noPrimary : reason)
        }
        func usable(_ node: NodeSnapshot) -> Bool {
            // A lagging replica is usable by a request that accepts its lag (a max_lag hint).
            node.role == .replica && (node.state == .up || node.state == .lagging) && !request.excluded.contains(node.name)
                && (node.lagSeconds ?? .infinity) <= request.maxLagSeconds
                && (request.maxLagBytes.map { limit in node.lagBytes.map { $0 <= limit } ?? false } ?? true)
                && (request.minimumLSN.map { minimum in node.lsn.map { $0 >= minimum } ?? false } ?? true)
        }
        func leastBusy(in region: String?) -> NodeSnapshot? {
            var best: NodeSnapshot?
            for node in nodes where (region == nil || node.region == region) && usable(node) {
                if let current = best, (current.inFlight, current.name) <= (node.inFlight, node.name) { continue }
                best = node
            }
            return best
        }
        // The hinted region, the client's region, then the fallback regions, each once.
        var tried = 0
        func attempt(_ region: String) -> RoutingDecision? {
            defer { tried += 1 }
            guard let best = leastBusy(in: region) else { return nil }
            return RoutingDecision(node: best.name, reason: tried == 0 ? .regionalReplica : .fallbackReplica)
        }
        if let hinted = request.hintRegion, let decision = attempt(hinted) { return decision }
        if request.hintRegion != request.region, let decision = attempt(request.region) { return decision }
        for region in fallbackRegions where region != request.region && region != request.hintRegion {
            if let decision = attempt(region) { return decision }
        }
        if request.hint == .replica, let any = leastBusy(in: nil) {
            return RoutingDecision(node: any.name, reason: .fallbackReplica)
        }
        return RoutingDecision(node: primary?.name, reason: primary == nil ? .noPrimary : .noReplicaPrimary)
    }
}

/// Flap damping: a node that failed must pass `required` probes in a row before it counts as up again.
public struct FlapDamper: Sendable, Equatable {
    public let required: Int
    public private(set) var isUp: Bool
    private var passes = 0

    public init(required: Int, startsUp: Bool = false) {
        self.required = max(1, required)
        self.isUp = startsUp
    }

    /// Records a probe; returns whether the node counts as up.
    public mutating func record(success: Bool) -> Bool {
        if success {
            self.passes += 1
            if !self.isUp && self.passes >= self.required { self.isUp = true }
        } else {
            self.passes = 0
            self.isUp = false
        }
        return self.isUp
    }
}
