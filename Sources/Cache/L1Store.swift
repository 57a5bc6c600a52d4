import DequeModule
import Synchronization

/// The in-process cache in front of Redis: entries by digest within a byte budget, evicted by CLOCK
/// (second chance: an entry used since the hand last passed is kept once more). An L1 hit still has
/// its versions checked against Redis; L1 only saves moving the reply's bytes. Shared by every event
/// loop, behind one lock; nothing slow happens inside it.
public final class L1Store: Sendable {
    struct Slot {
        var entry: CacheEntry
        var referenced: Bool
    }

    struct State {
        var slots: [String: Slot] = [:]
        var clock = Deque<String>()
        var bytes = 0
        var evictions = 0
    }

    public let budget: Int
    private let state = Mutex(State())

    public init(budget: Int) { self.budget = max(0, budget) }

    public func get(_ digest: String, nowMillis: Int64) -> CacheEntry? {
        self.state.withLock { state in
            guard var slot = state.slots[digest] else { return nil }
            if slot.entry.expiresAtMillis <= nowMillis {
                state.bytes -= slot.entry.size
                state.slots.removeValue(forKey: digest)
                return nil
            }
            if !slot.referenced {
                slot.referenced = true
                state.slots[digest] = slot
            }
            return slot.entry
        }
    }

    public func put(_ digest: String, _ entry: CacheEntry) {
        let size = entry.size
        guard size <= self.budget else { return }
        self.state.withLock { state in
            if let old = state.slots[digest] {
                state.bytes -= old.entry.size
            } else {
                state.clock.append(digest)
            }
            state.slots[digest] = Slot(entry: entry, referenced: false)
            state.bytes += size
            // Keys whose slot is gone (removed or expired) are dropped as the hand passes them.
            var passes = state.clock.count * 2
            while state.bytes > self.budget, passes > 0, let candidate = state.clock.popFirst() {
                passes -= 1
                guard var slot = state.slots[candidate] else { continue }
                if slot.referenced && candidate != digest {
                    slot.referenced = false
                    state.slots[candidate] = slot
                    state.clock.append(candidate)
                    continue
                }
                state.slots.removeValue(forKey: candidate)
                state.bytes -= slot.entry.size
                state.evictions += 1
            }
            if state.clock.count > 2 * state.slots.count + 64 {
                state.clock = Deque(state.clock.filter { state.slots[$0] != nil })
            }
        }
    }

    public func remove(_ digest: String) {
        self.state.withLock { state in
            if let slot = state.slots.removeValue(forKey: digest) { state.bytes -= slot.entry.size }
        }
    }

    /// Drops every entry whose material satisfies `matching` (CACHE FLUSH); all of them when nil.
    public func removeAll(where matching: ((CacheEntry) -> Bool)? = nil) {
        self.state.withLock { state in
            guard let matching else {
                state.slots.removeAll()
                state.clock.removeAll()
                state.bytes = 0
                return
            }
            for (digest, slot) in state.slots where matching(slot.entry) {
                state.slots.removeValue(forKey: digest)
                state.bytes -= slot.entry.size
            }
        }
    }

    public var stats: (entries: Int, bytes: Int, evictions: Int) {
        self.state.withLock { ($0.slots.count, $0.bytes, $0.evictions) }
    }
}
