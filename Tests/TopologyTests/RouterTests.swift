import Testing

@testable import Topology

@Suite struct LSNTests {
    @Test func parsesPrintsAndCompares() throws {
        let lsn = try #require(LSN("16/B374D848"))
        #expect(lsn.value == 0x16_B374_D848)
        #expect(lsn.description == "16/B374D848")
        #expect(try #require(LSN("0/0")) < lsn)
        #expect(lsn.bytes(since: try #require(LSN("16/B374D000"))) == 0x848)
        #expect(LSN("16B374D848") == nil)
        #expect(LSN("x/1") == nil)
        #expect(LSN("1/") == nil)
        #expect(LSN("123456789/0") == nil)
    }
}

@Suite struct RouterTests {
    static let nodes: [NodeSnapshot] = [
        .init(name: "primary", region: "us-east", role: .primary, state: .up, lsn: LSN("0/3000")),
        .init(name: "us-east-1", region: "us-east", role: .replica, state: .up, lsn: LSN("0/3000"), lagSeconds: 0.1, inFlight: 5),
        .init(name: "us-east-2", region: "us-east", role: .replica, state: .up, lsn: LSN("0/2000"), lagSeconds: 0.2, inFlight: 1),
        .init(name: "eu-west-1", region: "eu-west", role: .replica, state: .up, lsn: LSN("0/3000"), lagSeconds: 0.3),
    ]

    func decide(_ request: RoutingRequest, _ nodes: [NodeSnapshot] = Self.nodes) -> RoutingDecision {
        Router.decide(request, nodes: nodes, fallbackRegions: ["eu-west"])
    }

    @Test func writesGoToThePrimary() {
        #expect(self.decide(.init(readOnly: false, region: "us-east", maxLagSeconds: 1)) == .init(node: "primary", reason: .write))
        #expect(
            self.decide(.init(readOnly: true, region: "us-east", maxLagSeconds: 1, hint: .primary))
                == .init(node: "primary", reason: .hintPrimary))
    }

    @Test func readsGoToTheLeastBusyRegionalReplica() {
        #expect(
            self.decide(.init(readOnly: true, region: "us-east", maxLagSeconds: 1))
                == .init(node: "us-east-2", reason: .regionalReplica))
        #expect(
            self.decide(.init(readOnly: true, region: "eu-west", maxLagSeconds: 1))
                == .init(node: "eu-west-1", reason: .regionalReplica))
    }

    @Test func readYourWritesSkipsReplicasBehindTheClientsLastWrite() {
        #expect(
            self.decide(.init(readOnly: true, region: "us-east", minimumLSN: LSN("0/2800"), maxLagSeconds: 1))
                == .init(node: "us-east-1", reason: .regionalReplica))
        #expect(
            self.decide(.init(readOnly: true, region: "us-east", minimumLSN: LSN("0/4000"), maxLagSeconds: 1))
                == .init(node: "primary", reason: .noReplicaPrimary))
    }

    @Test func lagDrainAndDownFallBackToOtherRegionsThenThePrimary() {
        var nodes = Self.nodes
        nodes[1].state = .draining
        nodes[2].lagSeconds = 5
        #expect(
            self.decide(.init(readOnly: true, region: "us-east", maxLagSeconds: 1), nodes)
                == .init(node: "eu-west-1", reason: .fallbackReplica))
        nodes[3].state = .down
        #expect(
            self.decide(.init(readOnly: true, region: "us-east", maxLagSeconds: 1), nodes)
                == .init(node: "primary", reason: .noReplicaPrimary))
    }

    @Test func splitBrainAndNoPrimary() {
        var nodes = Self.nodes
        nodes[3].role = .primary
        #expect(self.decide(.init(readOnly: false, region: "us-east", maxLagSeconds: 1), nodes).reason == .splitBrain)
        nodes = Self.nodes
        nodes[0].state = .down
        #expect(
            self.decide(.init(readOnly: false, region: "us-east", maxLagSeconds: 1), nodes)
                == .init(node: nil, reason: .noPrimary))
        // Reads still find a replica while the primary is away.
        #expect(self.decide(.init(readOnly: true, region: "us-east", maxLagSeconds: 1), nodes).node == "us-east-2")
    }

    @Test func regionHintIsTriedFirst() {
        #expect(
            self.decide(.init(readOnly: true, region: "us-east", maxLagSeconds: 1, hintRegion: "eu-west"))
                == .init(node: "eu-west-1", reason: .regionalReplica))
    }
}

@Suite struct FlapDamperTests {
    @Test func aNodeMustPassSeveralProbesToComeBack() {
        var damper = FlapDamper(required: 3, startsUp: true)
        #expect(damper.record(success: false) == false)
        #expect(damper.record(success: true) == false)
        #expect(damper.record(success: true) == false)
        #expect(damper.record(success: false) == false)
        #expect(damper.record(success: true) == false)
        #expect(damper.record(success: true) == false)
        #expect(damper.record(success: true) == true)
        #expect(damper.record(success: true) == true)
    }
}
