import NIOCore
import Testing

@testable import Cache

/// RESP2 bytes of a reply, as a Redis server writes them: the other direction of `RESPDecoder`.
private func serverBytes(_ value: RedisValue) -> ByteBuffer {
    var buffer = ByteBuffer()
    func write(_ value: RedisValue) {
        switch value {
        case .simpleString(let text):
            buffer.writeString("+\(text)\r\n")
        case .error(let message):
            buffer.writeString("-\(message)\r\n")
        case .integer(let number):
            buffer.writeString(":\(number)\r\n")
        case .bulkString(nil):
            buffer.writeString("$-1\r\n")
        case .bulkString(let bytes?):
            buffer.writeString("$\(bytes.readableBytes)\r\n")
            buffer.writeImmutableBuffer(bytes)
            buffer.writeString("\r\n")
        case .array(nil):
            buffer.writeString("*-1\r\n")
        case .array(let elements?):
            buffer.writeString("*\(elements.count)\r\n")
            for element in elements { write(element) }
        }
    }
    write(value)
    return buffer
}

/// Decodes everything in `input`, fed in slices of `chunk` bytes (0: all at once).
private func decodeAll(_ input: ByteBuffer, chunk: Int = 0, decoder: RESPDecoder = RESPDecoder()) throws(RESPError)
    -> [RedisValue]
{
    var values: [RedisValue] = []
    var rest = input
    while rest.readableBytes > 0 {
        let slice = rest.readSlice(length: chunk == 0 ? rest.readableBytes : min(chunk, rest.readableBytes))!
        decoder.feed(slice)
        while let value = try decoder.next() { values.append(value) }
    }
    return values
}

@Suite struct RESPTests {
    static let samples: [RedisValue] = [
        .simpleString("OK"),
        .simpleString(""),
        .error("ERR unknown command 'NOPE'"),
        .integer(0),
        .integer(-42),
        .integer(Int64.max),
        .integer(Int64.min),
        .bulkString(ByteBuffer(string: "hello")),
        .bulkString(ByteBuffer()),
        .bulkString(ByteBuffer(bytes: [0, 13, 10, 255, 36, 42])),
        .bulkString(nil),
        .array(nil),
        .array([]),
        .array([.integer(1), .bulkString(ByteBuffer(string: "two")), .bulkString(nil), .array(nil)]),
        .array([.array([.array([.simpleString("deep"), .array([])]), .error("E")]), .integer(7)]),
    ]

    @Test(arguments: samples)
    func roundTripOfEachValue(_ value: RedisValue) throws {
        #expect(try decodeAll(serverBytes(value)) == [value])
        #expect(try decodeAll(serverBytes(value), chunk: 1) == [value])
    }

    @Test func manyValuesAllAtOnceAndByteByByte() throws {
        var input = ByteBuffer()
        for value in Self.samples {
            var bytes = serverBytes(value)
            input.writeBuffer(&bytes)
        }
        #expect(try decodeAll(input) == Self.samples)
        #expect(try decodeAll(input, chunk: 1) == Self.samples)
        #expect(try decodeAll(input, chunk: 7) == Self.samples)
    }

    @Test func largeBulkString() throws {
        var payload = ByteBuffer()
        for index in 0..<(1 << 20) { payload.writeInteger(UInt8(truncatingIfNeeded: index &* 31)) }
        let value = RedisValue.bulkString(payload)
        #expect(try decodeAll(serverBytes(value)) == [value])
        #expect(try decodeAll(serverBytes(value), chunk: 1_000) == [value])
        let decoder = RESPDecoder()
        #expect(try decodeAll(serverBytes(value), chunk: 4_096, decoder: decoder) == [value])
        #expect(decoder.bufferedBytes == 0)
    }

    @Test func nullBulkAndNullArrayStayDistinct() throws {
        let values = try decodeAll(ByteBuffer(string: "$-1\r\n*-1\r\n*2\r\n$-1\r\n*-1\r\n"))
        #expect(values == [.bulkString(nil), .array(nil), .array([.bulkString(nil), .array(nil)])])
        #expect(values.allSatisfy { $0 != .array([]) })
    }

    @Test func commandsEncodeAsArraysOfBulkStrings() throws {
        var buffer = ByteBuffer()
        RESPEncoder.command(["SET", "key", "value"], into: &buffer)
        #expect(String(buffer: buffer) == "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n")

        let binary = ByteBuffer(bytes: [0, 13, 10, 36, 255])
        let command = RedisCommand("SET", binary, "", 5_000, Int64(-1))
        buffer.clear()
        RESPEncoder.command(command, into: &buffer)
        let decoded = try decodeAll(buffer)
        #expect(
            decoded == [
                .array([
                    .bulkString(ByteBuffer(string: "SET")), .bulkString(binary), .bulkString(ByteBuffer()),
                    .bulkString(ByteBuffer(string: "5000")), .bulkString(ByteBuffer(string: "-1")),
                ])
            ])
        #expect(command.name == "SET")
        #expect(RedisCommand("PING").arguments == [ByteBuffer(string: "PING")])

        buffer.clear()
        RESPEncoder.command([ByteBuffer(), ByteBuffer()], into: &buffer)
        #expect(String(buffer: buffer) == "*2\r\n$0\r\n\r\n$0\r\n\r\n")
    }

    @Test func largeCommandRoundTrip() throws {
        let payload = ByteBuffer(repeating: 0x5A, count: 1 << 20)
        var buffer = ByteBuffer()
        RESPEncoder.command(RedisCommand("SET", "big", payload), into: &buffer)
        RESPEncoder.command(RedisCommand("GET", "big"), into: &buffer)
        let decoded = try decodeAll(buffer, chunk: 65_536)
        #expect(decoded.count == 2)
        let set = RedisValue.array([
            .bulkString(ByteBuffer(string: "SET")), .bulkString(ByteBuffer(string: "big")), .bulkString(payload),
        ])
        #expect(decoded.first == set)
    }

    @Test(arguments: [
        "?what\r\n",
        "$abc\r\nxyz\r\n",
        "*x\r\n",
        ":12a\r\n",
        "$-2\r\n",
        "*-5\r\n",
        "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
    ])
    func malformedInputIsAnError(_ input: String) {
        #expect(throws: RESPError.self) { try decodeAll(ByteBuffer(string: input)) }
        #expect(throws: RESPError.self) { try decodeAll(ByteBuffer(string: input), chunk: 1) }
        // The decoder stays failed: nothing after the bad bytes is taken for a reply.
        let decoder = RESPDecoder()
        decoder.feed(ByteBuffer(string: input))
        _ = try? decoder.next()
        decoder.feed(ByteBuffer(string: "+OK\r\n"))
        #expect(throws: RESPError.self) { try decoder.next() }
    }

    @Test func errorTextComesFromTheReader() {
        let decoder = RESPDecoder()
        decoder.feed(ByteBuffer(string: "!oops\r\n"))
        #expect {
            _ = try decoder.next()
        } throws: { error in
            guard let error = error as? RESPError else { return false }
            return error.code == .protocolViolation && error.message.contains("Protocol error")
        }
    }

    @Test func boundsOnLengths() {
        // A bulk string longer than the limit is refused before all of it arrives.
        let small = RESPDecoder(maxReplyBytes: 1_024)
        small.feed(ByteBuffer(string: "$1000000\r\n"))
        small.feed(ByteBuffer(repeating: 0x41, count: 2_000))
        #expect {
            _ = try small.next()
        } throws: { error in
            (error as? RESPError)?.code == .tooLarge
        }
        // An array announcing more elements than allowed allocates nothing for them.
        let few = RESPDecoder(maxElements: 16)
        few.feed(ByteBuffer(string: "*2147483647\r\n"))
        #expect {
            _ = try few.next()
        } throws: { error in
            (error as? RESPError)?.code == .tooLarge
        }
        let fine = RESPDecoder(maxElements: 3)
        fine.feed(serverBytes(.array([.integer(1), .integer(2), .integer(3)])))
        #expect(throws: Never.self) { try fine.next() }
    }

    @Test func helpers() {
        #expect(RedisValue.integer(5).int == 5)
        #expect(RedisValue.bulkString(ByteBuffer(string: "17")).int == 17)
        #expect(RedisValue.bulkString(ByteBuffer(string: "x")).int == nil)
        #expect(RedisValue.simpleString("OK").string == "OK")
        #expect(RedisValue.bulkString(ByteBuffer(string: "v")).string == "v")
        #expect(RedisValue.bulkString(ByteBuffer(string: "v")).bytes == ByteBuffer(string: "v"))
        #expect(RedisValue.bulkString(nil).bytes == nil)
        #expect(RedisValue.bulkString(nil).isNull)
        #expect(RedisValue.array(nil).isNull)
        #expect(!RedisValue.array([]).isNull)
        #expect(RedisValue.error("ERR x").string == nil)
        #expect(RedisValue.error("ERR x").errorMessage == "ERR x")
        #expect(RedisValue.integer(1).bytes == nil)
    }
}
