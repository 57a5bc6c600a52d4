import Testing

@testable import TidegateServer

/// The Redis client's slots, stepped event by event with plain objects for connections and loops.
@Suite struct RedisClientStateMachineTests {
    final class Connection {}
    typealias Machine = RedisClientStateMachine<Connection>

    final class Loop {}
    let loops = [Loop(), Loop(), Loop()]
    var ids: [ObjectIdentifier] { self.loops.map { ObjectIdentifier($0) } }

    @Test func picksTheCallersLoopFirst() {
        var machine = Machine(loops: self.ids)
        guard case .unavailable = machine.pick(preferring: self.ids[0]) else {
            Issue.record("available with nothing connected")
            return
        }
        let first = Connection()
        let second = Connection()
        guard case .announce = machine.connected(slot: 0, first) else {
            Issue.record("first connection did not announce")
            return
        }
        guard case .none = machine.connected(slot: 1, second) else {
            Issue.record("second connection announced again")
            return
        }
        for _ in 0..<5 {
            guard case .connection(let picked) = machine.pick(preferring: self.ids[1]) else {
                Issue.record("nothing picked")
                return
            }
            #expect(picked === second)
        }
        // No connection on loop 2: any connection that is up, spread over both.
        var picked: Set<ObjectIdentifier> = []
        for _ in 0..<6 {
            if case .connection(let connection) = machine.pick(preferring: self.ids[2]) {
                picked.insert(ObjectIdentifier(connection))
            }
        }
        #expect(picked == [ObjectIdentifier(first), ObjectIdentifier(second)])
        #expect(machine.nextAnnouncement() == true)
        #expect(machine.nextAnnouncement() == nil)
    }

    @Test func availabilityAnnouncementsAlternateInOrder() {
        var machine = Machine(loops: self.ids)
        let connections = [Connection(), Connection(), Connection()]
        guard case .announce = machine.connected(slot: 0, connections[0]) else {
            Issue.record("no announcement")
            return
        }
        // Changes while another thread is still handing announcements out are queued, not handed out twice.
        guard case .reconnect(0, 0, false) = machine.disconnected(slot: 0, connections[0]) else {
            Issue.record("disconnect of the last connection")
            return
        }
        _ = machine.reconnectDue(slot: 0)
        guard case .none = machine.connected(slot: 0, connections[1]) else {
            Issue.record("announce while announcing")
            return
        }
        #expect(machine.nextAnnouncement() == true)
        #expect(machine.nextAnnouncement() == false)
        #expect(machine.nextAnnouncement() == true)
        #expect(machine.nextAnnouncement() == nil)
        // A stale disconnect (of a connection the slot no longer has) changes nothing.
        guard case .none = machine.disconnected(slot: 0, connections[0]) else {
            Issue.record("stale disconnect acted")
            return
        }
        #expect(machine.isAvailable)
    }

    @Test func failedConnectsBackOff() {
        var machine = Machine(loops: [self.ids[0]])
        for attempt in 1...4 {
            guard case .reconnect(0, attempt, false) = machine.connectFailed(slot: 0) else {
                Issue.record("attempt \(attempt)")
                return
            }
            let due = machine.reconnectDue(slot: 0)
            let dueAgain = machine.reconnectDue(slot: 0)
            #expect(due && !dueAgain)
        }
        #expect(Machine.backoffMs(attempt: 0, minMs: 100, maxMs: 5_000, jitter: 1) == 100)
        #expect(Machine.backoffMs(attempt: 0, minMs: 100, maxMs: 5_000, jitter: 0.5) == 100)
        #expect(Machine.backoffMs(attempt: 3, minMs: 100, maxMs: 5_000, jitter: 1) == 800)
        #expect(Machine.backoffMs(attempt: 3, minMs: 100, maxMs: 5_000, jitter: 0.5) == 400)
        #expect(Machine.backoffMs(attempt: 10, minMs: 100, maxMs: 5_000, jitter: 1) == 5_000)
        #expect(Machine.backoffMs(attempt: 1_000, minMs: 100, maxMs: 5_000, jitter: 0.7) == 3_500)
    }

    @Test func shutdownWaitsForConnectionsAndConnectsInFlight() {
        var machine = Machine(loops: self.ids)
        let up = Connection()
        _ = machine.connected(slot: 0, up)
        _ = machine.nextAnnouncement()
        _ = machine.nextAnnouncement()
        _ = machine.connectFailed(slot: 2)
        guard case .close(let connections, false, true) = machine.shutdown() else {
            Issue.record("shutdown")
            return
        }
        #expect(connections.count == 1 && connections[0] === up)
        #expect(machine.nextAnnouncement() == false)
        guard case .shutDown = machine.pick(preferring: self.ids[0]) else {
            Issue.record("picked after shutdown")
            return
        }
        // Slot 1 was connecting: its new connection is closed at once.
        let late = Connection()
        guard case .close(let closed) = machine.connected(slot: 1, late), closed === late else {
            Issue.record("late connection kept")
            return
        }
        guard case .none = machine.disconnected(slot: 1, late) else {
            Issue.record("complete too early")
            return
        }
        let closedSlotDue = machine.reconnectDue(slot: 2)
        #expect(!closedSlotDue)
        guard case .shutdownComplete = machine.disconnected(slot: 0, up) else {
            Issue.record("shutdown did not complete")
            return
        }
        guard case .alreadyShutDown = machine.shutdown() else {
            Issue.record("second shutdown")
            return
        }
    }
}
