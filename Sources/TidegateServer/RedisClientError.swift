/// Why a Redis command failed. RESP error replies are not failures: they come back as `.error` values.
struct RedisClientError: Error, Equatable, CustomStringConvertible {
    struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case unavailable, timeout, connectionClosed, protocolViolation, setupFailed, shutdown
        }

        private let base: Base

        /// No connection to Redis is up (Redis down, connecting, or backing off): the command was not sent.
        static let unavailable = Code(base: .unavailable)
        /// No reply by the command's deadline; the connection was closed.
        static let timeout = Code(base: .timeout)
        /// The connection closed (or failed) before the reply came.
        static let connectionClosed = Code(base: .connectionClosed)
        /// Redis sent bytes that are not RESP, or a reply nobody asked for.
        static let protocolViolation = Code(base: .protocolViolation)
        /// AUTH or SELECT was refused.
        static let setupFailed = Code(base: .setupFailed)
        /// The client was shut down.
        static let shutdown = Code(base: .shutdown)

        var description: String {
            switch self.base {
            case .unavailable: return "unavailable"
            case .timeout: return "timeout"
            case .connectionClosed: return "connection closed"
            case .protocolViolation: return "protocol violation"
            case .setupFailed: return "setup failed"
            case .shutdown: return "shut down"
            }
        }
    }

    var code: Code
    var message: String

    init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    static let unavailable = RedisClientError(.unavailable, "no connection to Redis is up")
    static let shutdown = RedisClientError(.shutdown, "the Redis client is shut down")

    var description: String { "Redis \(self.code): \(self.message)" }
}
