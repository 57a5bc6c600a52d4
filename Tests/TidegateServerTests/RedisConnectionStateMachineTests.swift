import Cache
import NIOCore
import Testing

@testable import TidegateServer

/// The Redis connection's state machine, stepped event by event with plain values (strings for requests).
@Suite struct RedisConnectionStateMachineTests {
    typealias Machine = RedisConnectionStateMachine<String>

    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func ready() -> Machine {
        var machine = Machine()
        guard case .becameReady = machine.activated(setupCount: 0, setupDeadline: self.start) else {
            Issue.record("no setup commands: ready at once")
            return machine
        }
        return machine
    }

    @Test func repliesGoToTheirCommandsInOrder() {
        var machine = self.ready()
        guard case .write(let armed) = machine.send(["a", "b"], deadline: self.start + .milliseconds(50)) else {
            Issue.record("send does not write")
            return
        }
        #expect(armed == self.start + .milliseconds(50))
        // The timer is armed already: a second send does not arm another.
        guard case .write(nil) = machine.send(["c"], deadline: self.start + .milliseconds(60)) else {
            Issue.record("second send armed a second timer")
            return
        }
        var answered: [String] = []
        for value in [RedisValue.integer(1), .error("ERR x"), .bulkString(nil)] {
            if case .succeed(let request, _) = machine.replyReceived(value) { answered.append(request) }
        }
        #expect(answered == ["a", "b", "c"])
        #expect(machine.pendingCount == 0)
        guard case .none = machine.timerFired(now: self.start + .milliseconds(50)) else {
            Issue.record("a timer with nothing pending did something")
            return
        }
    }

    @Test func aLateReplyClosesAndFailsEverything() {
        var machine = self.ready()
        _ = machine.send(["a", "b"], deadline: self.start + .milliseconds(50))
        _ = machine.send(["c"], deadline: self.start + .milliseconds(70))
        guard case .succeed("a", _) = machine.replyReceived(.integer(1)) else {
            Issue.record("first reply not matched")
            return
        }
        // A timer that fires before the oldest deadline re-arms for it.
        guard case .armTimer(let next) = machine.timerFired(now: self.start + .milliseconds(40)) else {
            Issue.record("timer not re-armed")
            return
        }
        #expect(next == self.start + .milliseconds(50))
        guard
            case .fail(let requests, let timedOut, let error, let close) = machine.timerFired(
                now: self.start + .milliseconds(55))
        else {
            Issue.record("no timeout")
            return
        }
        #expect(requests == ["b", "c"])
        #expect(timedOut == 1)
        #expect(error.code == .connectionClosed)
        #expect(close)
        // Closed is absorbing: the inactive channel, late replies and new commands change nothing more.
        guard case .none = machine.channelInactive(), case .none = machine.replyReceived(.integer(2)) else {
            Issue.record("closed is not absorbing")
            return
        }
        guard case .reject = machine.send(["d"], deadline: self.start + .seconds(1)) else {
            Issue.record("a closed connection accepted a command")
            return
        }
    }

    @Test func setupRepliesComeFirstAndAnErrorFailsTheConnection() {
        var machine = Machine()
        guard case .write = machine.activated(setupCount: 2, setupDeadline: self.start + .milliseconds(500)) else {
            Issue.record("setup commands not written")
            return
        }
        guard case .write(nil) = machine.send(["early"], deadline: self.start + .milliseconds(550)) else {
            Issue.record("a command during setup is not written behind it")
            return
        }
        guard case .none = machine.replyReceived(.simpleString("OK")) else {
            Issue.record("first setup reply")
            return
        }
        guard case .fail(let requests, 0, let error, true) = machine.replyReceived(.error("WRONGPASS invalid")) else {
            Issue.record("a refused AUTH did not fail the connection")
            return
        }
        #expect(requests == ["early"])
        #expect(error == RedisClientError(.setupFailed, "WRONGPASS invalid"))
    }

    @Test func setupThatSucceedsMakesTheConnectionReady() {
        var machine = Machine()
        _ = machine.activated(setupCount: 1, setupDeadline: self.start + .milliseconds(500))
        guard case .becameReady = machine.replyReceived(.simpleString("OK")) else {
            Issue.record("not ready after the setup reply")
            return
        }
        guard case .fail(_, _, let error, true) = machine.replyReceived(.integer(1)) else {
            Issue.record("an unsolicited reply was accepted")
            return
        }
        #expect(error.code == .protocolViolation)
    }

    @Test func inactiveChannelFailsPendingWithoutClosingAgain() {
        var machine = self.ready()
        _ = machine.send(["a"], deadline: self.start + .milliseconds(50))
        guard case .fail(["a"], 0, let error, false) = machine.channelInactive() else {
            Issue.record("pending command not failed")
            return
        }
        #expect(error.code == .connectionClosed)
    }
}
