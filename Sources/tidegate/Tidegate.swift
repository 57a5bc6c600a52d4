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
        subcommands: [Serve.self, CheckConfig.self],
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
        let config: TidegateConfig
        do {
            config = try await TidegateConfig.load(path: self.options.config, overrides: try self.options.overrides)
        } catch let error as ConfigError {
            FileHandleOutput.standardError(error.description)
            throw ExitCode(2)
        }
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
