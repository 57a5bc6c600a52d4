import CHiredis
import NIOCore

/// One RESP2 value as Redis sends it. RESP has two nulls: a null bulk string (`$-1`) is
/// `.bulkString(nil)` and a null array (`*-1`) is `.array(nil)`.
public enum RedisValue: Sendable, Equatable {
    case simpleString(String)
    /// An error reply (`-ERR ...`): an answer to one command, not a failure of the connection.
    case error(String)
    case integer(Int64)
    case bulkString(ByteBuffer?)
    case array([RedisValue]?)

    /// The bytes of a bulk string or of a simple string; nil for every other value and for null.
    public var bytes: ByteBuffer? {
        switch self {
        case .bulkString(let bytes): return bytes
        case .simpleString(let text): return ByteBuffer(string: text)
        case .error, .integer, .array: return nil
        }
    }

    /// An integer reply, or a bulk or simple string that holds a decimal integer (`GET` of a counter).
    public var int: Int64? {
        switch self {
        case .integer(let value): return value
        case .bulkString(let bytes): return bytes.flatMap { Int64(String(buffer: $0)) }
        case .simpleString(let text): return Int64(text)
        case .error, .array: return nil
        }
    }

    /// A simple string, or a bulk string read as UTF-8; nil for every other value (an error's text is in
    /// `errorMessage`) and for null.
    public var string: String? {
        switch self {
        case .simpleString(let text): return text
        case .bulkString(let bytes): return bytes.map { String(buffer: $0) }
        case .error, .integer, .array: return nil
        }
    }

    /// The text of an error reply; nil for every other value.
    public var errorMessage: String? {
        if case .error(let message) = self { return message }
        return nil
    }

    /// True for a null bulk string and a null array.
    public var isNull: Bool {
        switch self {
        case .bulkString(nil), .array(nil): return true
        case .bulkString, .array, .simpleString, .error, .integer: return false
        }
    }
}

/// Why Redis's bytes could not be decoded. After one, the decoder is unusable: the connection must close.
public struct RESPError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Base: Sendable, Hashable {
            case protocolViolation, tooLarge, outOfMemory
        }

        private let base: Base

        /// Bytes that are not RESP2 (hiredis's reader rejected them).
        public static let protocolViolation = Code(base: .protocolViolation)
        /// A reply longer than the decoder's `maxReplyBytes`, or an array with more than `maxElements`.
        public static let tooLarge = Code(base: .tooLarge)
        public static let outOfMemory = Code(base: .outOfMemory)

        public var description: String {
            switch self.base {
            case .protocolViolation: return "protocol violation"
            case .tooLarge: return "reply too large"
            case .outOfMemory: return "out of memory"
            }
        }
    }

    public var code: Code
    public var message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(self.code): \(self.message)" }
}

/// A single-step decoder of Redis replies: feed it bytes as they arrive and take whole values with `next()`,
/// which returns nil until a value is complete. It wraps hiredis's `redisReader`.
///
/// Memory is bounded: a reply longer than `maxReplyBytes` (still incomplete with that many bytes buffered)
/// or an array announcing more than `maxElements` elements is a `.tooLarge` error rather than an
/// allocation of what a bad length asks for, and the reader gives back its buffer when it drains one
/// larger than 64 KiB (`maxbuf`).
///
/// Not Sendable: it owns a C reader whose buffer and parse stack change on every call, with no lock. One
/// connection's handler owns it and uses it on that connection's event loop only.
public final class RESPDecoder {
    /// What the reply-building callbacks read and write; hiredis hands it to them as each task's privdata.
    fileprivate struct Context {
        var hiredis: redisReplyObjectFunctions
        var maxElements: Int32
        var tooManyElements: Int32?
    }

    /// The largest reply accepted, in bytes. Redis's own limit on a bulk string is 512 MiB.
    public let maxReplyBytes: Int
    /// The most elements one array may have.
    public let maxElements: Int
    /// The reader keeps an emptied buffer up to this size (hiredis's `maxbuf`) and frees larger ones.
    public static let retainedBufferBytes = 64 * 1024

    private let reader: UnsafeMutablePointer<redisReader>
    private let functions: UnsafeMutablePointer<redisReplyObjectFunctions>
    private let context: UnsafeMutablePointer<Context>

    public init(maxReplyBytes: Int = 512 * 1024 * 1024, maxElements: Int = 1 << 20) {
        precondition(maxReplyBytes > 0 && maxElements > 0, "RESPDecoder needs positive limits")
        guard let reader = redisReaderCreate() else { fatalError("hiredis could not allocate a reader") }
        self.reader = reader
        self.maxReplyBytes = maxReplyBytes
        self.maxElements = min(maxElements, Int(Int32.max))
        // hiredis's own builders (static in hiredis.c) come with a reader it creates; wrap two of them.
        self.context = .allocate(capacity: 1)
        self.context.initialize(
            to: Context(hiredis: reader.pointee.fn.pointee, maxElements: Int32(self.maxElements), tooManyElements: nil))
        self.functions = .allocate(capacity: 1)
        self.functions.initialize(to: reader.pointee.fn.pointee)
        self.functions.pointee.createArray = { task, elements in
            guard let task, let context = task.pointee.privdata?.assumingMemoryBound(to: Context.self) else {
                return nil
            }
            if elements > context.pointee.maxElements {
                // NULL means out of memory to hiredis; the decoder reports the real reason.
                context.pointee.tooManyElements = elements
                return nil
            }
            return context.pointee.hiredis.createArray?(task, elements)
        }
        self.functions.pointee.createNil = { task in
            guard let task, let context = task.pointee.privdata?.assumingMemoryBound(to: Context.self),
                let object = context.pointee.hiredis.createNil?(task)
            else { return nil }
            // hiredis makes one kind of nil for `$-1` and `*-1`; the task's type still tells them apart.
            if task.pointee.type == REDIS_REPLY_ARRAY {
                object.assumingMemoryBound(to: redisReply.self).pointee.integer = RESPDecoder.nullArrayMarker
            }
            return object
        }
        reader.pointee.fn = self.functions
        reader.pointee.privdata = UnsafeMutableRawPointer(self.context)
        reader.pointee.maxbuf = Self.retainedBufferBytes
    }

    deinit {
        redisReaderFree(self.reader)
        self.functions.deinitialize(count: 1)
        self.functions.deallocate()
        self.context.deinitialize(count: 1)
        self.context.deallocate()
    }

    /// Marks a hiredis nil reply that was a null array (its `integer` field is otherwise unused).
    private static let nullArrayMarker: Int64 = 1

    /// Bytes fed and not yet consumed by a whole reply.
    public var bufferedBytes: Int { self.reader.pointee.len - self.reader.pointee.pos }

    /// Appends bytes received from Redis.
    public func feed(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { bytes in
            guard let base = bytes.baseAddress, bytes.count > 0 else { return }
            // A failure here (out of memory, or an earlier error) sets the reader's error, which next() reports.
            _ = redisReaderFeed(self.reader, base.assumingMemoryBound(to: CChar.self), bytes.count)
        }
    }

    /// The next whole reply, or nil when more bytes are needed.
    public func next() throws(RESPError) -> RedisValue? {
        var object: UnsafeMutableRawPointer?
        if redisReaderGetReply(self.reader, &object) != REDIS_OK {
            throw self.readerError()
        }
        guard let object else {
            if self.bufferedBytes > self.maxReplyBytes {
                throw RESPError(
                    code: .tooLarge,
                    message: "a reply is longer than \(self.maxReplyBytes) bytes (\(self.bufferedBytes) buffered)")
            }
            return nil
        }
        defer { freeReplyObject(object) }
        return Self.value(of: object.assumingMemoryBound(to: redisReply.self))
    }

    private func readerError() -> RESPError {
        if let elements = self.context.pointee.tooManyElements {
            return RESPError(code: .tooLarge, message: "an array of \(elements) elements (at most \(self.maxElements))")
        }
        // redisReaderGetError is a macro: the text is the reader's errstr.
        let message = withUnsafeBytes(of: self.reader.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        switch self.reader.pointee.err {
        case REDIS_ERR_OOM: return RESPError(code: .outOfMemory, message: message)
        default: return RESPError(code: .protocolViolation, message: message)
        }
    }

    /// The value of a hiredis reply tree (hiredis nests arrays at most 7 deep, so the recursion is bounded).
    private static func value(of reply: UnsafeMutablePointer<redisReply>) -> RedisValue {
        let node = reply.pointee
        switch node.type {
        case REDIS_REPLY_STATUS:
            return .simpleString(Self.text(node))
        case REDIS_REPLY_ERROR:
            return .error(Self.text(node))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(node.integer))
        case REDIS_REPLY_STRING:
            return .bulkString(ByteBuffer(bytes: UnsafeRawBufferPointer(start: node.str, count: node.len)))
        case REDIS_REPLY_NIL:
            return node.integer == Self.nullArrayMarker ? .array(nil) : .bulkString(nil)
        case REDIS_REPLY_ARRAY:
            var elements: [RedisValue] = []
            elements.reserveCapacity(node.elements)
            for index in 0..<node.elements {
                guard let element = node.element[index] else { continue }
                elements.append(Self.value(of: element))
            }
            return .array(elements)
        default:
            return .error("hiredis returned an unknown reply type \(node.type)")
        }
    }

    private static func text(_ node: redisReply) -> String {
        String(decoding: UnsafeRawBufferPointer(start: node.str, count: node.len), as: UTF8.self)
    }
}

@available(*, unavailable)
extension RESPDecoder: Sendable {}

/// A value that can be one argument of a Redis command (a bulk string on the wire).
public protocol RESPArgument {
    func writeArgument(into buffer: inout ByteBuffer)
}

extension String: RESPArgument {
    public func writeArgument(into buffer: inout ByteBuffer) { buffer.writeString(self) }
}

extension ByteBuffer: RESPArgument {
    public func writeArgument(into buffer: inout ByteBuffer) { buffer.writeImmutableBuffer(self) }
}

extension Int: RESPArgument {
    public func writeArgument(into buffer: inout ByteBuffer) { buffer.writeString(String(self)) }
}

extension Int64: RESPArgument {
    public func writeArgument(into buffer: inout ByteBuffer) { buffer.writeString(String(self)) }
}

/// One Redis command: its name and arguments, each sent as a bulk string.
public struct RedisCommand: Sendable, Equatable {
    public var arguments: [ByteBuffer]

    public init(arguments: [ByteBuffer]) {
        self.arguments = arguments
    }

    /// `RedisCommand("SET", key, value, "PX", 5000)`.
    public init(_ name: String, _ args: any RESPArgument...) {
        self.init(name, arguments: args)
    }

    public init(_ name: String, arguments args: [any RESPArgument]) {
        var arguments = [ByteBuffer(string: name)]
        arguments.reserveCapacity(args.count + 1)
        for argument in args {
            var buffer = ByteBuffer()
            argument.writeArgument(into: &buffer)
            arguments.append(buffer)
        }
        self.arguments = arguments
    }

    /// The command name as given (e.g. "GET").
    public var name: String { self.arguments.first.map { String(buffer: $0) } ?? "" }
}

/// Writes commands in RESP, with hiredis's `redisFormatCommandArgv`.
public enum RESPEncoder {
    /// Appends one command (an array of bulk strings) to `buffer`. `arguments` must not be empty.
    public static func command(_ arguments: [ByteBuffer], into buffer: inout ByteBuffer) {
        precondition(!arguments.isEmpty, "a Redis command needs at least its name")
        // hiredis wants one pointer per argument: lay the arguments out in one scratch buffer.
        var total = 0
        for argument in arguments { total += argument.readableBytes }
        precondition(total < Int(Int32.max) - 65536, "a Redis command of \(total) bytes is too long to format")
        var scratch = ByteBuffer()
        scratch.reserveCapacity(max(total, 1))
        var lengths: [Int] = []
        lengths.reserveCapacity(arguments.count)
        for argument in arguments {
            lengths.append(argument.readableBytes)
            scratch.writeImmutableBuffer(argument)
        }
        if total == 0 { scratch.writeInteger(UInt8(0)) }
        scratch.withUnsafeReadableBytes { bytes in
            let base = bytes.baseAddress!.assumingMemoryBound(to: CChar.self)
            var pointers: [UnsafePointer<CChar>?] = []
            pointers.reserveCapacity(lengths.count)
            var offset = 0
            for length in lengths {
                pointers.append(base + offset)
                offset += length
            }
            var target: UnsafeMutablePointer<CChar>?
            let count = redisFormatCommandArgv(&target, Int32(lengths.count), &pointers, lengths)
            guard count >= 0, let target else { fatalError("hiredis could not allocate a formatted command") }
            defer { redisFreeCommand(target) }
            buffer.writeBytes(UnsafeRawBufferPointer(start: target, count: Int(count)))
        }
    }

    /// Appends one command whose arguments are text.
    public static func command(_ arguments: [String], into buffer: inout ByteBuffer) {
        Self.command(arguments.map { ByteBuffer(string: $0) }, into: &buffer)
    }

    public static func command(_ command: RedisCommand, into buffer: inout ByteBuffer) {
        Self.command(command.arguments, into: &buffer)
    }
}
