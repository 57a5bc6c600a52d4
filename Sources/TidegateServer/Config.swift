import Configuration
import Foundation
import SystemPackage
import Yams

/// Pooling mode: how long a client keeps a server connection.
public enum PoolMode: String, Sendable, CaseIterable {
    case session
    case transaction
}

/// How Tidegate authenticates clients.
public enum ClientAuthMethod: String, Sendable, CaseIterable {
    case scramSHA256 = "scram-sha-256"
    case md5
    case trust
}

/// The whole configuration, as plain values with defaults. Reading it from YAML, the environment and
/// the command line is `TidegateConfig.load`; nothing here reads global state.
public struct TidegateConfig: Sendable, Equatable {
    public struct Listen: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 6432
        public var maxClientConnections = 10_000
        public var tlsCertificate = ""
        public var tlsPrivateKey = ""
        public var tlsEnabled: Bool { !self.tlsCertificate.isEmpty && !self.tlsPrivateKey.isEmpty }
    }

    public struct HTTP: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 9187
    }

    public struct Limits: Sendable, Equatable {
        public var maxMessageBytes = 64 * 1024 * 1024
        public var startupTimeoutMs = 10_000
        public var idleInTransactionTimeoutMs = 0
        /// Bytes a client may have queued while it waits for a server connection before Tidegate stops
        /// reading from it.
        public var clientBufferBytes = 1024 * 1024
    }

    public struct Pool: Sendable, Equatable {
        public var mode = PoolMode.transaction
        public var minSize = 0
        public var maxSize = 40
        public var connectTimeoutMs = 5_000
        public var checkoutTimeoutMs = 30_000
        public var idleTimeoutMs = 600_000
        public var serverLifetimeMs = 3_600_000
        public var livenessCheckAfterMs = 30_000
        /// Turn unnamed Parse messages into cached server-side statements, so extended-protocol clients
        /// reuse plans.
        public var prepareUnnamed = true
        /// Server-side prepared statements kept per server connection (least recently used closed first).
        public var maxPreparedPerServer = 1_000
    }

    public struct Node: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 5432
    }

    public struct User: Sendable, Equatable {
        public var name: String
        /// Plain password, or a SCRAM verifier.
        public var password: String
        /// Password Tidegate uses to log in to the backend when `password` is a verifier.
        public var backendPassword: String?
        public var admin: Bool
    }

    public var listen = Listen()
    public var http = HTTP()
    public var limits = Limits()
    public var pool = Pool()
    public var primary = Node(host: "127.0.0.1", port: 5432)
    public var authMethod = ClientAuthMethod.scramSHA256
    public var users: [String: User] = [:]
    /// Event-loop threads (0: one per CPU core). Each serves its own clients with the server connections
    /// it opened; pool.max_size is one budget over all of them.
    public var threads = 1
    /// On SIGTERM, how long open transactions may run before their clients are disconnected.
    public var shutdownTimeoutMs = 30_000
    public var logLevel = "info"
    /// The virtual database name of the admin console.
    public static let adminDatabase = "tidegate"

    public init() {}
}

public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var problems: [String]
    public var description: String { self.problems.map { "config: \($0)" }.joined(separator: "\n") }
}

extension TidegateConfig {
    /// Reads the configuration: command-line overrides first, then TIDEGATE_* environment variables, then
    /// the YAML file. Every key of config/tidegate.yaml can be overridden from the environment:
    /// `listen.port` is `TIDEGATE_LISTEN_PORT`. Throws `ConfigError` listing every problem found.
    public static func load(
        path: String, overrides: [String: String] = [:],
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> TidegateConfig {
        guard FileManager.default.fileExists(atPath: path) else {
            throw ConfigError(problems: ["file not found: \(path)"])
        }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(problems: ["cannot read \(path): \(error)"])
        }
        let userNames: [String]
        do {
            userNames = try Self.userNames(inYAML: text)
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError(problems: ["\(path) is not valid YAML: \(error)"])
        }
        let file: FileProvider<YAMLSnapshot>
        do {
            file = try await FileProvider<YAMLSnapshot>(filePath: FilePath(path))
        } catch {
            throw ConfigError(problems: ["cannot parse \(path): \(error)"])
        }
        var prefixed: [String: String] = [:]
        for (key, value) in environment where key.hasPrefix("TIDEGATE_") {
            prefixed[String(key.dropFirst("TIDEGATE_".count))] = value
        }
        let reader = ConfigReader(providers: [
            InMemoryProvider(values: Dictionary(uniqueKeysWithValues: overrides.map { (AbsoluteConfigKey($0.key.split(separator: ".").map(String.init)), ConfigValue(.string($0.value), isSecret: false)) })),
            EnvironmentVariablesProvider(environmentVariables: prefixed),
            file,
        ])
        return try Self.read(reader, userNames: userNames)
    }

    /// User names are the keys of the `users` mapping (swift-configuration reads values by key but does
    /// not enumerate mappings).
    static func userNames(inYAML text: String) throws -> [String] {
        guard let root = try Yams.compose(yaml: text) else { return [] }
        guard let mapping = root.mapping else { throw ConfigError(problems: ["the top level must be a mapping"]) }
        guard let users = mapping["users"] else { return [] }
        guard let usersMapping = users.mapping else {
            throw ConfigError(problems: ["users: must be a mapping of user name to settings"])
        }
        return usersMapping.keys.compactMap(\.string)
    }

    static func read(_ reader: ConfigReader, userNames: [String]) throws -> TidegateConfig {
        var config = TidegateConfig()
        var problems: [String] = []

        func int(_ key: String, _ value: inout Int, min: Int = 0, max: Int = Int.max) {
            if let string = reader.string(forKey: ConfigKey(key)) {
                guard let parsed = Int(string.trimmingCharacters(in: .whitespaces)) else {
                    problems.append("\(key): expected a whole number, got \"\(string)\"")
                    return
                }
                value = parsed
            } else if let parsed = reader.int(forKey: ConfigKey(key)) {
                value = parsed
            }
            if value < min || value > max {
                problems.append("\(key): \(value) is out of range (\(min)...\(max == Int.max ? "" : String(max)))")
            }
        }
        func string(_ key: String, _ value: inout String) {
            if let parsed = reader.string(forKey: ConfigKey(key)) { value = parsed }
        }
        func bool(_ key: String, _ value: inout Bool) {
            if let string = reader.string(forKey: ConfigKey(key)) {
                switch string.lowercased() {
                case "true", "yes", "on", "1": value = true
                case "false", "no", "off", "0": value = false
                default: problems.append("\(key): expected true or false, got \"\(string)\"")
                }
            } else if let parsed = reader.bool(forKey: ConfigKey(key)) {
                value = parsed
            }
        }

        string("listen.host", &config.listen.host)
        int("listen.port", &config.listen.port, min: 0, max: 65535)
        int("listen.max_client_connections", &config.listen.maxClientConnections, min: 1)
        string("listen.tls_certificate", &config.listen.tlsCertificate)
        string("listen.tls_private_key", &config.listen.tlsPrivateKey)
        if config.listen.tlsCertificate.isEmpty != config.listen.tlsPrivateKey.isEmpty {
            problems.append("listen.tls_certificate and listen.tls_private_key must be set together")
        }
        for path in [config.listen.tlsCertificate, config.listen.tlsPrivateKey] where !path.isEmpty {
            if !FileManager.default.isReadableFile(atPath: path) { problems.append("TLS file not readable: \(path)") }
        }
        string("http.host", &config.http.host)
        int("http.port", &config.http.port, min: 0, max: 65535)
        int("limits.max_message_bytes", &config.limits.maxMessageBytes, min: 1024, max: 1 << 30)
        int("limits.startup_timeout_ms", &config.limits.startupTimeoutMs, min: 100)
        int("limits.idle_in_transaction_timeout_ms", &config.limits.idleInTransactionTimeoutMs)
        int("limits.client_buffer_bytes", &config.limits.clientBufferBytes, min: 8192)
        var mode = config.pool.mode.rawValue
        string("pool.mode", &mode)
        if let parsed = PoolMode(rawValue: mode) {
            config.pool.mode = parsed
        } else {
            problems.append("pool.mode: \"\(mode)\" is not one of session, transaction")
        }
        int("pool.min_size", &config.pool.minSize)
        int("pool.max_size", &config.pool.maxSize, min: 1)
        if config.pool.minSize > config.pool.maxSize { problems.append("pool.min_size is larger than pool.max_size") }
        int("pool.connect_timeout_ms", &config.pool.connectTimeoutMs, min: 1)
        int("pool.checkout_timeout_ms", &config.pool.checkoutTimeoutMs, min: 1)
        int("pool.idle_timeout_ms", &config.pool.idleTimeoutMs, min: 1)
        int("pool.server_lifetime_ms", &config.pool.serverLifetimeMs, min: 1)
        int("pool.liveness_check_after_ms", &config.pool.livenessCheckAfterMs)
        bool("pool.prepare_unnamed", &config.pool.prepareUnnamed)
        int("pool.max_prepared_per_server", &config.pool.maxPreparedPerServer, min: 1)
        string("primary.host", &config.primary.host)
        int("primary.port", &config.primary.port, min: 1, max: 65535)
        var method = config.authMethod.rawValue
        string("auth.method", &method)
        if let parsed = ClientAuthMethod(rawValue: method) {
            config.authMethod = parsed
        } else {
            problems.append("auth.method: \"\(method)\" is not one of scram-sha-256, md5, trust")
        }
        int("threads", &config.threads, min: 0, max: 256)
        if config.threads == 0 { config.threads = max(1, ProcessInfo.processInfo.activeProcessorCount) }
        int("shutdown_timeout_ms", &config.shutdownTimeoutMs)
        string("log_level", &config.logLevel)
        if !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(config.logLevel) {
            problems.append("log_level: \"\(config.logLevel)\" is not a log level")
        }
        for name in userNames {
            guard !name.isEmpty, !name.contains(".") else {
                problems.append("users: \"\(name)\" is not a valid user name (no dots)")
                continue
            }
            var password = ""
            string("users.\(name).password", &password)
            var backendPassword = ""
            string("users.\(name).backend_password", &backendPassword)
            var admin = false
            bool("users.\(name).admin", &admin)
            if password.hasPrefix("SCRAM-SHA-256$") && backendPassword.isEmpty {
                problems.append(
                    "users.\(name): password is a SCRAM verifier, so backend_password is needed to log in to the server")
            }
            config.users[name] = User(
                name: name, password: password, backendPassword: backendPassword.isEmpty ? nil : backendPassword,
                admin: admin)
        }
        if config.users.isEmpty && config.authMethod != .trust {
            problems.append("users: no users configured, so nobody can log in")
        }
        if !problems.isEmpty { throw ConfigError(problems: problems) }
        return config
    }
}
