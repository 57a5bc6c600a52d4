import Foundation
import Testing

@testable import TidegateServer

@Suite struct ConfigTests {
    /// config/tidegate.yaml of this repository.
    static let labConfigPath = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("config/tidegate.yaml").path

    /// A minimal valid file; tests append or replace sections.
    static let minimalYAML = """
        users:
          tidegate:
            password: tidegate
        """

    /// Writes `yaml` to a fresh temporary file, runs `body` with its path, then deletes it.
    static func withTemporaryFile<T>(_ yaml: String, _ body: (String) async throws -> T) async throws -> T {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent(
            "tidegate-config-\(UUID().uuidString).yaml"
        )
        try yaml.write(to: url, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: url) }
        return try await body(url.path)
    }

    /// Loads `yaml` and returns the ConfigError's problems (records an issue if loading succeeds).
    static func problems(
        _ yaml: String,
        overrides: [String: String] = [:],
        environment: [String: String] = [:]
    ) async throws -> [String] {
        try await Self.withTemporaryFile(yaml) { path in
            do {
                let config = try await TidegateConfig.load(path: path, overrides: overrides, environment: environment)
                Issue.record("expected a ConfigError, got \(config)")
                return []
            } catch let error as ConfigError {
                #expect(!error.problems.isEmpty)
                #expect(error.description.hasPrefix("config: "))
                return error.problems
            }
        }
    }

    @Test func labFileLoadsAndMatchesTheLab() async throws {
        let config = try await TidegateConfig.load(path: Self.labConfigPath, environment: [:])
        #expect(config.listen.host == "127.0.0.1")
        #expect(config.listen.port == 6432)
        #expect(config.listen.maxClientConnections == 10_000)
        #expect(!config.listen.tlsEnabled)
        #expect(config.http.host == "127.0.0.1")
        #expect(config.http.port == 9187)
        #expect(config.limits.maxMessageBytes == 67_108_864)
        #expect(config.limits.startupTimeoutMs == 10_000)
        #expect(config.limits.idleInTransactionTimeoutMs == 0)
        #expect(config.pool.mode == .transaction)
        #expect(config.pool.minSize == 0)
        #expect(config.pool.maxSize == 40)
        #expect(config.pool.connectTimeoutMs == 5_000)
        #expect(config.pool.checkoutTimeoutMs == 30_000)
        #expect(config.pool.idleTimeoutMs == 600_000)
        #expect(config.pool.serverLifetimeMs == 3_600_000)
        #expect(config.pool.livenessCheckAfterMs == 30_000)
        #expect(config.region == "us-east")
        #expect(
            config.nodes.map { "\($0.region)/\($0.name)@\($0.endpoint.host):\($0.endpoint.port)" } == [
                "us-east/pg-primary@127.0.0.1:15432", "us-east/us-east-1@127.0.0.1:15433", "eu-west/eu-west-1@127.0.0.1:15434",
            ])
        #expect(config.routes)
        #expect(config.fallbackRegions(of: "us-east") == ["eu-west"])
        #expect(config.routing == TidegateConfig.Routing())
        #expect(config.health.intervalMs == 500)
        #expect(config.healthLogin?.user == "tidegate")
        #expect(config.healthLogin?.password == "tidegate")
        #expect(config.authMethod == .scramSHA256)
        #expect(
            config.users == [
                "tidegate": .init(name: "tidegate", password: "tidegate", backendPassword: nil, admin: true)
            ]
        )
        #expect(config.threads == 1)
        #expect(config.logLevel == "info")
    }

    @Test func overridesBeatEnvironmentWhichBeatsTheFile() async throws {
        let config = try await TidegateConfig.load(
            path: Self.labConfigPath,
            overrides: ["listen.port": "7002", "pool.min_size": "2"],
            environment: [
                "TIDEGATE_LISTEN_PORT": "7001",
                "TIDEGATE_POOL_MODE": "session",
                "TIDEGATE_POOL_MAX_SIZE": "12",
                "TIDEGATE_PRIMARY_PORT": "25432",
                "TIDEGATE_USERS_TIDEGATE_PASSWORD": "from-env",
                "POOL_MAX_SIZE": "99",  // not prefixed: ignored
                "HOME": "/nowhere",
            ]
        )
        #expect(config.listen.port == 7002)
        #expect(config.pool.minSize == 2)
        #expect(config.pool.mode == .session)
        #expect(config.pool.maxSize == 12)
        #expect(config.primary.port == 25432)
        #expect(config.users["tidegate"]?.password == "from-env")
        // Untouched keys still come from the file.
        #expect(config.http.port == 9187)
        #expect(config.primary.host == "127.0.0.1")
    }

    @Test func defaultsFillWhatTheFileLeavesOut() async throws {
        let config = try await Self.withTemporaryFile(Self.minimalYAML) {
            try await TidegateConfig.load(path: $0, environment: [:])
        }
        #expect(config.listen.port == 6432)
        #expect(config.pool.mode == .transaction)
        #expect(config.pool.prepareUnnamed)
        #expect(config.pool.maxPreparedPerServer == 1_000)
        #expect(config.primary.port == 5432)
        #expect(config.nodes == [.init(name: "primary", region: "default", endpoint: .init(host: "127.0.0.1", port: 5432))])
        #expect(!config.routes)
        #expect(config.shutdownTimeoutMs == 30_000)
        #expect(config.users["tidegate"]?.admin == false)
    }

    @Test func usersWithVerifierAndBackendPassword() async throws {
        let yaml = """
            auth:
              method: md5
            threads: 4
            pool:
              prepare_unnamed: false
            users:
              alice:
                password: "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
                backend_password: alice-backend
              bob:
                password: bob
                admin: yes
            """
        let config = try await Self.withTemporaryFile(yaml) {
            try await TidegateConfig.load(path: $0, environment: [:])
        }
        #expect(config.authMethod == .md5)
        #expect(config.threads == 4)
        #expect(!config.pool.prepareUnnamed)
        #expect(config.users.count == 2)
        #expect(config.users["alice"]?.backendPassword == "alice-backend")
        #expect(config.users["alice"]?.password.hasPrefix("SCRAM-SHA-256$") == true)
        #expect(config.users["bob"]?.admin == true)
        #expect(config.users["bob"]?.backendPassword == nil)
    }

    @Test func badPoolMode() async throws {
        let problems = try await Self.problems(Self.minimalYAML + "\npool:\n  mode: bogus\n")
        #expect(problems.contains { $0.contains("pool.mode") && $0.contains("bogus") })
    }

    @Test func portOutOfRange() async throws {
        let problems = try await Self.problems(Self.minimalYAML + "\nlisten:\n  port: 70000\n")
        #expect(problems.contains { $0.contains("listen.port") && $0.contains("70000") })
    }

    @Test func badAuthMethod() async throws {
        let problems = try await Self.problems(Self.minimalYAML + "\nauth:\n  method: x\n")
        #expect(problems.contains { $0.contains("auth.method") && $0.contains("\"x\"") })
    }

    @Test func verifierWithoutBackendPassword() async throws {
        let yaml = """
            users:
              alice:
                password: "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
            """
        let problems = try await Self.problems(yaml)
        #expect(problems.contains { $0.contains("users.alice") && $0.contains("backend_password") })
    }

    @Test func environmentValuesAreValidatedToo() async throws {
        let problems = try await Self.problems(
            Self.minimalYAML,
            environment: ["TIDEGATE_LISTEN_PORT": "abc", "TIDEGATE_POOL_PREPARE_UNNAMED": "maybe"]
        )
        #expect(problems.contains { $0.contains("listen.port") && $0.contains("abc") })
        #expect(problems.contains { $0.contains("pool.prepare_unnamed") && $0.contains("maybe") })
    }

    @Test func everyProblemIsListed() async throws {
        let yaml =
            Self.minimalYAML + """

                pool:
                  mode: bogus
                  min_size: 50
                  max_size: 10
                listen:
                  port: -1
                log_level: chatty
                threads: -1
                """
        let problems = try await Self.problems(yaml)
        for key in ["pool.mode", "pool.min_size", "listen.port", "log_level", "threads"] {
            #expect(problems.contains { $0.contains(key) }, "no problem names \(key): \(problems)")
        }
    }

    @Test func noUsers() async throws {
        let problems = try await Self.problems("listen:\n  port: 6432\n")
        #expect(problems.contains { $0.contains("users") })
    }

    @Test func notYAML() async throws {
        let problems = try await Self.problems("listen: [unclosed\n  port: {\n")
        #expect(problems.contains { $0.contains("YAML") })
        let scalar = try await Self.problems("just some words")
        #expect(scalar.contains { $0.contains("top level") })
        let list = try await Self.problems("users:\n  - alice\n  - bob\n")
        #expect(list.contains { $0.contains("users") && $0.contains("mapping") })
    }

    @Test func missingFile() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("no-such-\(UUID().uuidString).yaml")
            .path
        let error = await #expect(throws: ConfigError.self) {
            _ = try await TidegateConfig.load(path: path, environment: [:])
        }
        #expect(error?.problems == ["file not found: \(path)"])
    }

    @Test func tlsPathsMustComeInPairsAndExist() async throws {
        let problems = try await Self.problems(Self.minimalYAML + "\nlisten:\n  tls_certificate: /no/such/cert.pem\n")
        #expect(problems.contains { $0.contains("listen.tls_certificate") && $0.contains("listen.tls_private_key") })
        #expect(problems.contains { $0.contains("/no/such/cert.pem") })
    }

    @Test func regionsNodesAndRouting() async throws {
        let yaml = Self.minimalYAML + """

            region: eu-west
            regions:
              us-east:
                nodes:
                  a: {host: db-a, port: 5433}
                  b: {host: db-b}
              eu-west:
                fallback: [us-east]
                nodes:
                  c: {port: 6000}
              ap-south:
                fallback: [eu-west, us-east]
                nodes:
                  d: {}
            routing:
              read_your_writes: global
              max_lag_ms: 250
              max_lag_bytes: 1048576
              failover_wait_ms: 2000
              retry_reads: false
              safe_functions: [My_Func, audit.peek]
            health:
              interval_ms: 200
              up_after: 5
            """
        let config = try await Self.withTemporaryFile(yaml) { try await TidegateConfig.load(path: $0, environment: [:]) }
        #expect(config.region == "eu-west")
        #expect(config.nodes.map(\.name) == ["a", "b", "c", "d"])
        #expect(config.node(named: "a")?.endpoint == .init(host: "db-a", port: 5433))
        #expect(config.node(named: "b")?.endpoint == .init(host: "db-b", port: 5432))
        #expect(config.node(named: "c")?.region == "eu-west")
        #expect(config.fallbackRegions(of: "ap-south") == ["eu-west", "us-east"])
        // Without a configured fallback: every other region, in file order.
        #expect(config.fallbackRegions(of: "us-east") == ["eu-west", "ap-south"])
        #expect(config.routing.readYourWrites == .global)
        #expect(config.routing.maxLagMs == 250)
        #expect(config.routing.maxLagBytes == 1_048_576)
        #expect(config.routing.failoverWaitMs == 2_000)
        #expect(!config.routing.retryReads)
        #expect(config.routing.safeFunctions == ["my_func", "audit.peek"])
        #expect(config.health.intervalMs == 200)
        #expect(config.health.upAfter == 5)
        #expect(config.healthLogin?.user == "tidegate")
    }

    @Test func badRegionsAreReported() async throws {
        let problems = try await Self.problems(
            Self.minimalYAML + """

                region: mars
                regions:
                  us-east:
                    fallback: [nowhere]
                    nodes:
                      a: {port: 1}
                  eu-west:
                    nodes:
                      a: {port: 2}
                routing:
                  read_your_writes: sometimes
                """)
        #expect(problems.contains { $0.contains("region: \"mars\" is not one of the configured regions") })
        #expect(problems.contains { $0.contains("\"nowhere\" is not another configured region") })
        #expect(problems.contains { $0.contains("node \"a\" is named twice") })
        #expect(problems.contains { $0.contains("routing.read_your_writes") })
    }

    @Test func routingNeedsAHealthLogin() async throws {
        let problems = try await Self.problems(
            """
            auth:
              method: trust
            regions:
              r:
                nodes:
                  a: {port: 1}
                  b: {port: 2}
            """)
        #expect(problems.contains { $0.contains("health.user") })
    }
}
