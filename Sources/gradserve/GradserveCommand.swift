import ArgumentParser
import Foundation
import GradCore
import GradServer
import Hummingbird
import Metrics
import Prometheus

@main
struct GradserveCommand: AsyncParsableCommand {
    static func main() async {
        if BuildInfo.requiresAVX2, !BuildInfo.cpuHasAVX2 {
            FileHandle.standardError.write(Data("gradserve: this build uses AVX2/FMA, which this CPU lacks; rebuild with GRADSERVE_PORTABLE=1\n".utf8))
            Foundation.exit(1)
        }
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "gradserve",
        abstract: "Derivatives of neural networks as a service: VJPs, JVPs, Jacobians and divergences on OpenBLAS.",
        subcommands: [ServeCommand.self, BenchCommand.self, VersionCommand.self])
}

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the HTTP service.")

    @Option(help: "Interface to bind (0.0.0.0 for every interface).") var host = "127.0.0.1"
    @Option(help: "Port to listen on.") var port = 8080
    @Option(help: "Directory where registered models persist.") var dataDir = "./data"
    @Option(help: "Bearer token required on /v1/* (default: $GRADSERVE_API_KEY; none when unset).") var apiKey: String?
    @Option(help: "Largest request body in bytes.") var maxBodyBytes = 256 << 20
    @Option(help: "Largest answer in numbers (refused with 422 before computing).") var maxOutputElements = 1 << 24
    @Option(help: "Requests computed at once (default: the number of cores).") var workers: Int?
    @Option(help: "Requests that may wait for a worker before 503.") var maxQueued = 64
    @Option(help: "Seconds a request may take before 504.") var deadline = 60.0
    @Option(help: "OpenBLAS threads per call. 1 (default) runs requests in parallel; with --workers 1, the core count gives one call all cores.")
    var blasThreads = 1
    @Option(help: "Cores for one request: its rows are split across them, one OpenBLAS thread each (with --workers 1, the core count).")
    var threadsPerRequest = 1
    @Option(help: "Longest run of one /v1/benchmark request, in seconds.") var benchmarkMaxSeconds = 30.0
    @Option(help: "PEM certificate chain; with --tls-key the server speaks HTTPS only.") var tlsCert: String?
    @Option(help: "PEM private key for --tls-cert.") var tlsKey: String?

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535") }
        guard maxBodyBytes > 0, maxOutputElements > 0, maxQueued >= 0, deadline > 0, blasThreads >= 1, threadsPerRequest >= 1, benchmarkMaxSeconds > 0 else {
            throw ValidationError("limits must be positive")
        }
        if let workers, workers < 1 { throw ValidationError("--workers must be at least 1") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
    }

    func run() async throws {
        MemoryPolicy.keepLargeBlocks()
        var config = ServerConfiguration()
        config.host = host
        config.port = port
        config.dataDirectory = dataDir
        config.apiKey = apiKey ?? ProcessInfo.processInfo.environment["GRADSERVE_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        config.maxBodyBytes = maxBodyBytes
        config.maxOutputElements = maxOutputElements
        config.workers = workers ?? max(1, ProcessInfo.processInfo.activeProcessorCount)
        config.maxQueued = maxQueued
        config.deadlineSeconds = deadline
        config.blasThreads = blasThreads
        config.threadsPerRequest = threadsPerRequest
        config.benchmarkMaxSeconds = benchmarkMaxSeconds
        config.tlsCertificatePath = tlsCert
        config.tlsKeyPath = tlsKey
        let metrics = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics))
        let app = try await buildApplication(config, metrics: metrics)
        try await app.runService()
    }
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print the version and BLAS build.")
    func run() {
        print("gradserve \(GradserveVersion.current)")
        print(BLASRuntime.config)
    }
}

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Print a timing report: the seed's nn.Linear(1000, 1000) loop and the ToyMLP cells.")

    @Option(help: "Timed iterations per ToyMLP workload.") var iterations = 50
    @Option(help: "Iterations of the seed nn.Linear(1000, 1000) loop.") var seedIterations = 500
    @Option(help: "Iterations of the one-row-at-a-time Jacobian loop.") var rowloopIterations = 3
    @Option(help: "Cores for one computation: rows split across them, one OpenBLAS thread each.") var threads = 1
    @Option(help: "Stop a workload after this many seconds (at least 3 iterations run).") var maxSeconds: Double?
    @Option(help: "Run only workloads whose name contains this (repeatable).") var only: [String] = []
    @Flag(help: "Print the report as JSON.") var json = false

    func validate() throws {
        guard threads >= 1, iterations >= 1, seedIterations >= 1, rowloopIterations >= 1 else {
            throw ValidationError("--threads and the iteration counts must be at least 1")
        }
    }

    func run() throws {
        MemoryPolicy.keepLargeBlocks()
        var suite = StandardSuite()
        suite.threads = threads
        suite.iterations = iterations
        suite.seedIterations = seedIterations
        suite.rowLoopIterations = rowloopIterations
        suite.maxSecondsPerWorkload = maxSeconds ?? .infinity
        suite.only = only
        let report = try suite.run()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(report.table)
        }
    }
}
