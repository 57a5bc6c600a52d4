import Foundation
#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import TidegateServer

@main
struct Tidegate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidegate",
        abstract: "A PostgreSQL wire-protocol proxy for market data.",
        subcommands: [Serve.self, CheckConfig.self, Migrate.self, Policies.self],
        defaultSubcommand: Serve.self)
}

struct ConfigOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "Path of the YAML configuration file.")
    var config = "config/tidegate.yaml"

    @Option(help: "Override listen.port.")
    var port: Int?

    @Option(help: "Override http.port (0 disables the HTTP endpoint).")
    var httpPort: Int?

    @Option(name: .customLong("set"), help: "Override any key: --set pool.mode=session (repeatable).")
    var settings: [String] = []

    /// The configuration, or exit status 2 with every problem on standard error.
    func load() async throws -> TidegateConfig {
        do {
            return try await TidegateConfig.load(path: self.config, overrides: try self.overrides)
        } catch let error as ConfigError {
            FileHandleOutput.standardError(error.description)
            throw ExitCode(2)
        }
    }

    var overrides: [String: String] {
        get throws {
            var overrides: [String: String] = [:]
            if let port { overrides["listen.port"] = "\(port)" }
            if let httpPort { overrides["http.port"] = "\(httpPort)" }
            for setting in self.settings {
                guard let equals = setting.firstIndex(of: "=") else {
                    throw ValidationError("--set expects key=value, got \"\(setting)\"")
                }
                overrides[String(setting[..<equals])] = String(setting[setting.index(after: equals)...])
            }
            return overrides
        }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the proxy.")

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let config = try await self.options.load()
        raiseOpenFileLimit()
        let level = Logger.Level(rawValue: config.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "tidegate")
        let service = TidegateService(
            config: config, configPath: self.options.config, overrides: try self.options.overrides, registry: registry,
            logger: logger)
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: service)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

struct CheckConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config", abstract: "Validate the configuration and print a summary.")

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        do {
            let config = try await TidegateConfig.load(path: self.options.config, overrides: try self.options.overrides)
            print("\(self.options.config): OK")
            print("  listen \(config.listen.host):\(config.listen.port), pool.mode \(config.pool.mode.rawValue), max_size \(config.pool.maxSize)")
            print("  auth \(config.authMethod.rawValue), \(config.users.count) user(s), region \(config.region)")
            for node in config.nodes {
                print("  node \(node.name) (region \(node.region)) \(node.endpoint.host):\(node.endpoint.port)")
            }
        } catch let error as ConfigError {
            FileHandleOutput.standardError(error.description)
            throw ExitCode(2)
        }
    }
}

enum FileHandleOutput {
    static func standardError(_ text: String) {
        var stream = StandardErrorStream()
        print(text, to: &stream)
    }
}

struct StandardErrorStream: TextOutputStream {
    mutating func write(_ string: String) {
        FileHandle.standardError.write(Data(string.utf8))
    }
}

/// Every client is a file descriptor: raise the soft limit to the hard limit, as PgBouncer does.
func raiseOpenFileLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply the schema migrations to the primary (each in its own transaction; twice is a no-op).")

    @OptionGroup var options: ConfigOptions

    @Option(help: "The database to migrate.")
    var database = "market"

    @Option(help: "The user to log in as (default: health.user, or the first user with a plain password).")
    var user: String?

    @Option(help: "The directory of numbered migration files.")
    var dir = "migrations"

    @Flag(help: "Show what would be applied, change nothing.")
    var dryRun = false

    @Option(help: "Apply migrations up to and including this version only.")
    var target: Int?

    func run() async throws {
        let config = try await self.options.load()
        do {
            let report = try await MigrationRunner.run(
                config: config, directory: self.dir, database: self.database, user: self.user, dryRun: self.dryRun,
                target: self.target, log: { print("migrate: \($0)") })
            let verb = report.dryRun ? "would apply" : "applied"
            print(
                "migrate: \(self.database) on \(report.node) (\(report.flavour.rawValue) flavour): "
                    + "\(report.alreadyApplied) already applied, \(verb) \(report.applied.count)")
            for migration in report.applied where report.dryRun {
                print("  \(migration.version) \(migration.name) (\(migration.file))")
            }
        } catch let error as MigrationError {
            FileHandleOutput.standardError("migrate: \(error.description)")
            throw ExitCode(1)
        }
    }
}

struct Policies: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the storage policies of relations: (config) next to the database's, or make the database match.",
        subcommands: [Show.self, Apply.self])

    struct Options: ParsableArguments {
        @OptionGroup var options: ConfigOptions

        @Option(help: "The database (default: storage.database).")
        var database: String?

        @Option(help: "The user to log in as (default: health.user, or the first user with a plain password).")
        var user: String?

        func run(apply: Bool, dryRun: Bool) async throws {
            let config = try await self.options.load()
            do {
                let lines = try await StoragePolicies.run(
                    config: config, database: self.database, user: self.user, apply: apply, dryRun: dryRun)
                for line in lines { print(line) }
            } catch let error as MigrationError {
                FileHandleOutput.standardError("policies: \(error.description)")
                throw ExitCode(1)
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Per relation and policy: what the config asks for, what the database has, what apply would do.")

        @OptionGroup var options: Options

        func run() async throws { try await self.options.run(apply: false, dryRun: false) }
    }

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make the database match the config: policies (TimescaleDB), or partitions, retention and bar refresh (plain PostgreSQL).")

        @OptionGroup var options: Options

        @Flag(help: "Show the statements apply would run, change nothing.")
        var dryRun = false

        func run() async throws { try await self.options.run(apply: true, dryRun: self.dryRun) }
    }
}
