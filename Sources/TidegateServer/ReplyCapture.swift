import NIOCore
import PostgresWire

/// The reply of a cache miss as the client receives it, collected to be stored: only what a replay can
/// reproduce exactly. An error, a notice, a changed setting (ParameterStatus), COPY, a suspended portal or
/// a reply past the size limit makes it uncacheable; the reason is kept for SHOW CACHE.
struct ReplyCapture {
    private(set) var bytes = ByteBuffer()
    private(set) var refusal: String?
    let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Backend messages a replay may contain.
    static let replayable: Set<UInt8> = Set("TDC12nIt".utf8)

    mutating func add(_ frame: PostgresFrame) {
        guard self.refusal == nil else { return }
        let id = frame.id
        if id == BackendMessageID.readyForQuery.rawValue { return }
        guard Self.replayable.contains(id) else {
            self.refusal = Self.reason(id)
            return
        }
        self.add(frame.raw)
    }

    /// Bytes Tidegate wrote for the request itself (a synthesized ParseComplete or BindComplete).
    mutating func add(_ buffer: ByteBuffer) {
        guard self.refusal == nil else { return }
        guard self.bytes.readableBytes + buffer.readableBytes <= self.limit else {
            self.refusal = "larger than cache.max_entry_bytes"
            self.bytes = ByteBuffer()
            return
        }
        var copy = buffer
        self.bytes.writeBuffer(&copy)
    }

    mutating func refuse(_ reason: String) {
        if self.refusal == nil { self.refusal = reason }
    }

    /// The read is sent again elsewhere: what the failed attempt produced is dropped.
    mutating func reset() {
        self.bytes.clear()
        self.refusal = nil
    }

    static func reason(_ id: UInt8) -> String {
        switch id {
        case UInt8(ascii: "E"): return "error"
        case UInt8(ascii: "N"): return "notice"
        case UInt8(ascii: "S"): return "setting changed"
        case UInt8(ascii: "A"): return "notification"
        case UInt8(ascii: "s"): return "portal suspended"
        case UInt8(ascii: "G"), UInt8(ascii: "H"), UInt8(ascii: "W"): return "copy"
        default: return "message \(Character(UnicodeScalar(id)))"
        }
    }
}
