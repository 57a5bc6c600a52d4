import Logging
import NIOCore
import NIOPosix

/// A connection of a command-line tool (`tidegate migrate`, `tidegate policies`) to the primary: it logs
/// in to each configured node in turn until one is not in recovery. Errors are `MigrationError`s with
/// the server's message and SQLSTATE.
public struct PrimaryConnection: Sendable {
    public let node: String
    let server: ServerConnection
    let loop: any EventLoop

    /// The login of a tool: `user` (its backend password, or its plain password), else the health login.
    static func login(config: TidegateConfig, user: String?) throws -> (user: String, password: String?) {
        if let user {
            let password = config.users[user].flatMap { $0.backendPassword ?? ($0.password.hasPrefix("SCRAM-SHA-256$") ? nil : $0.password) }
            return (user, password)
        }
        guard let login = config.healthLogin else {
            throw MigrationError("no user to log in with: pass --user or configure a user with a plain password")
        }
        return (login.user, login.password)
    }

    public static func connect(config: TidegateConfig, database: String, user: String?) async throws -> PrimaryConnection {
        let login = try Self.login(config: config, user: user)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let logger = { () -> Logger in
            var logger = Logger(label: "tidegate.tool")
            logger.logLevel = .warning
            return logger
        }()
        var problems: [String] = []
        for node in config.nodes {
            do {
                let server = try await loop.submit {
                    ServerConnection(
                        key: PoolKey(database: database, user: login.user, node: node.name), node: node.endpoint, loop: loop,
                        password: login.password, maxMessageBytes: 1 << 30, logger: logger)
                }.get()
                try await loop.flatSubmit {
                    server.connect(connectTimeout: .milliseconds(Int64(config.pool.connectTimeoutMs)), maxMessageBytes: 1 << 30)
                }.get()
                let connection = PrimaryConnection(node: node.name, server: server, loop: loop)
                if try await connection.rows("SELECT pg_catalog.pg_is_in_recovery()").first?.first == "f" {
                    return connection
                }
                await connection.close()
                problems.append("\(node.name): a replica")
            } catch {
                problems.append("\(node.name): \(error)")
            }
        }
        throw MigrationError("no primary among the configured nodes (\(problems.joined(separator: "; ")))")
    }

    /// Runs a simple query; the rows of all its statements, as text.
    public func rows(_ sql: String) async throws -> [[String?]] {
        let server = self.server
        do {
            return try await self.loop.flatSubmit { server.runInternalRows(sql) }.get()
        } catch TidegateError.serverRefused(let fields) {
            throw MigrationError("\(fields.message ?? "error") (SQLSTATE \(fields.sqlState ?? "?"))")
        }
    }

    public func close() async {
        let server = self.server
        _ = try? await self.loop.submit { server.close() }.get()
    }
}
