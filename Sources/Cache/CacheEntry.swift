import NIOCore

/// What identifies one cached result: every input that can change the bytes of the reply (ARCHITECTURE.md,
/// contract 4). The material is kept whole in the entry and compared on every hit, so a hash collision
/// can never serve another query's, role's or session's result.
public struct CacheKey: Sendable, Hashable {
    public var material: [UInt8]
    /// 128 bits of the material, hex: the Redis key suffix and the L1 key.
    public var digest: String

    /// Parts are length-prefixed, so no two different lists of parts give the same material.
    public init(parts: [[UInt8]]) {
        var material: [UInt8] = []
        material.reserveCapacity(parts.reduce(0) { $0 + $1.count + 4 })
        for part in parts {
            let count = UInt32(truncatingIfNeeded: part.count)
            material.append(contentsOf: [UInt8(count >> 24), UInt8(truncatingIfNeeded: count >> 16), UInt8(truncatingIfNeeded: count >> 8), UInt8(truncatingIfNeeded: count)])
            material.append(contentsOf: part)
        }
        self.material = material
        var low: UInt64 = 0xcbf2_9ce4_8422_2325
        var high: UInt64 = 0x6c62_272e_07bb_0142
        for byte in material {
            low = (low ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
            high = (high ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
            high = (high << 7) | (high >> 57)
        }
        self.digest = Self.hex(low) + Self.hex(high)
    }

    static func hex(_ value: UInt64) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: 16 - text.count) + text
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(self.digest) }
}

/// One cached result: the reply's bytes as the backend sent them (RowDescription, DataRows,
/// CommandComplete; for the extended protocol BindComplete and the rest), the versions of the tags it
/// read before its query was sent, and when it was filled.
public struct CacheEntry: Sendable {
    public var material: [UInt8]
    public var generation: String
    /// One per tag after the generation, in `CacheTags.readTags` order.
    public var versions: [Int64]
    public var filledAtMillis: Int64
    public var expiresAtMillis: Int64
    public var reply: ByteBuffer

    public init(material: [UInt8], generation: String, versions: [Int64], filledAtMillis: Int64, expiresAtMillis: Int64, reply: ByteBuffer) {
        self.material = material
        self.generation = generation
        self.versions = versions
        self.filledAtMillis = filledAtMillis
        self.expiresAtMillis = expiresAtMillis
        self.reply = reply
    }

    /// Bytes held in memory (for the L1 budget).
    public var size: Int { self.material.count + self.generation.utf8.count + self.versions.count * 8 + self.reply.readableBytes + 96 }

    static let magic: UInt32 = 0x5447_4331  // "TGC1"

    public func encoded() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(self.size)
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(UInt32(self.material.count))
        buffer.writeBytes(self.material)
        buffer.writeInteger(UInt16(self.generation.utf8.count))
        buffer.writeString(self.generation)
        buffer.writeInteger(UInt32(self.versions.count))
        for version in self.versions { buffer.writeInteger(version) }
        buffer.writeInteger(self.filledAtMillis)
        buffer.writeInteger(self.expiresAtMillis)
        var reply = self.reply
        buffer.writeBuffer(&reply)
        return buffer
    }

    /// nil for anything that is not a well-formed entry (another format, a truncated value).
    public static func decode(_ value: ByteBuffer) -> CacheEntry? {
        var buffer = value
        guard buffer.readInteger(as: UInt32.self) == Self.magic,
            let materialCount = buffer.readInteger(as: UInt32.self), materialCount <= buffer.readableBytes,
            let material = buffer.readBytes(length: Int(materialCount)),
            let generationCount = buffer.readInteger(as: UInt16.self),
            let generation = buffer.readString(length: Int(generationCount)),
            let versionCount = buffer.readInteger(as: UInt32.self), Int(versionCount) * 8 <= buffer.readableBytes
        else { return nil }
        var versions: [Int64] = []
        versions.reserveCapacity(Int(versionCount))
        for _ in 0..<versionCount {
            guard let version = buffer.readInteger(as: Int64.self) else { return nil }
            versions.append(version)
        }
        guard let filled = buffer.readInteger(as: Int64.self), let expires = buffer.readInteger(as: Int64.self) else { return nil }
        return CacheEntry(
            material: material, generation: generation, versions: versions, filledAtMillis: filled, expiresAtMillis: expires,
            reply: buffer)
    }
}
