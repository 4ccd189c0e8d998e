import ArgumentParser
import Foundation
import GradCore
import GradServer
import Hummingbird
import Logging
import Metrics
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle

@main
struct GradserveCommand: AsyncParsableCommand {
    static func main() async {
        // Before any other thread allocates: glibc fixes its arena count when a second arena is
        // first needed, so a later M_ARENA_MAX is ignored (see MemoryPolicy.singleArena).
        let subcommand = CommandLine.arguments.dropFirst().first
        if subcommand == "serve" { MemoryPolicy.singleArena() }
        // Swift tasks (the request handlers) run on the HTTP server's event loops rather than on a
        // second pool of threads: a request then changes threads twice (to its compute thread and
        // back) instead of four times; measured under wrk, half the context switches and ~15 % more
        // requests a second. Nothing may block in a task: computation runs on the compute pool, and
        // file and lock waits on NIO's blocking-I/O pool. First thing: every job scheduled from here
        // on goes to the event loops. The floor gets it too, so it stays the same stack.
        if subcommand == "serve" || subcommand == "floor" {
            NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        }
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
        subcommands: [ServeCommand.self, BenchCommand.self, FloorCommand.self, VersionCommand.self])
}

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the HTTP service.")

    @Option(help: "Interface to bind (0.0.0.0 for every interface).") var host = "127.0.0.1"
    @Option(parsing: .unconditional, help: "Port to listen on.") var port = 8080
    @Option(help: "Directory where registered models persist.") var dataDir = "./data"
    @Option(
        help: ArgumentHelp(
            "Read-only directory of model files loaded at start (registry files or POST /v1/models bodies, *.json).",
            discussion: "Every replica started with the same directory serves the same models by the same ids; a bad file stops the start."))
    var modelsDir: String?
    @Option(help: "Bearer token required on /v1/* (default: $GRADSERVE_API_KEY; none when unset).") var apiKey: String?
    @Option(parsing: .unconditional, help: "Largest request body in bytes (K, M, G suffixes: KiB, MiB, GiB).", transform: ByteSize.parse) var maxBodyBytes =
        256 << 20
    @Option(parsing: .unconditional, help: "Largest answer in numbers (refused with 422 before computing).") var maxOutputElements = 1 << 24
    @Option(
        parsing: .unconditional,
        help: "Bytes one request may hold at its peak: body, tensors, hidden layers, answer (422 above; default 1G, or --memory-limit when smaller).",
        transform: ByteSize.parse)
    var maxRequestMemory: Int?
    @Option(parsing: .unconditional, help: "GFLOP one request may compute (422 above).") var maxRequestGflop = 1000.0
    @Option(parsing: .unconditional, help: "Layers a posted model may have (422 above).") var maxLayers = 1024
    @Option(
        parsing: .unconditional, help: "Bytes all requests together may hold; what does not fit gets 503 (default: 80% of the cgroup limit or of RAM).",
        transform: ByteSize.parse)
    var memoryLimit: Int?
    @Option(parsing: .unconditional, help: "Requests computed at once (default: the number of cores).") var workers: Int?
    @Option(parsing: .unconditional, help: "Requests that may wait for a worker before 503.") var maxQueued = 64
    @Option(parsing: .unconditional, help: "Seconds a request may take before 504 (its computation stops then).") var deadline = 60.0
    @Option(parsing: .unconditional, help: "Seconds a client has to send a whole body after the request head (408 after).") var bodyTimeout = 30.0
    @Option(parsing: .unconditional, help: "Seconds an answer may wait for the client to read it before the connection is closed.") var writeTimeout = 60.0
    @Option(parsing: .unconditional, help: "Open connections at most; more are closed at once.") var maxConnections = 1024
    @Option(help: "Browser origin allowed to call the API (repeatable, or comma-separated; * for any). Requests with another Origin get 403.")
    var allowOrigin: [String] = []
    @Option(help: "Host names the server answers to (repeatable, or comma-separated; default any), against DNS rebinding.")
    var allowedHosts: [String] = []
    @Option(parsing: .unconditional, help: "Models the registry may hold.") var maxModels = 10_000
    @Option(parsing: .unconditional, help: "Bytes the registry's model files may take together.", transform: ByteSize.parse) var maxRegistryBytes = 4 << 30
    @Option(
        parsing: .unconditional,
        help: "OpenBLAS threads per call. 1 (default) runs requests in parallel; with --workers 1, the core count gives one call all cores.")
    var blasThreads = 1
    @Option(
        parsing: .unconditional, help: "Cores for one request: its rows are split across them, one OpenBLAS thread each (with --workers 1, the core count).")
    var threadsPerRequest = 1
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Milliseconds a forward, VJP, JVP or Jacobian may take on its connection's event loop when no other is running (0: none).",
            discussion:
                "A repeat of a plan the same registered model computed within this time (binary answers, small bodies) runs there, skipping two thread hand-offs (0.1-0.3 ms of a 2 ms request); a health check on the same loop may wait that long."
        ))
    var inlineMs = 2.0
    @Option(parsing: .unconditional, help: "Longest run of one /v1/benchmark request, in seconds.") var benchmarkMaxSeconds = 30.0
    @Option(help: "PEM certificate chain; with --tls-key the server speaks HTTPS only.") var tlsCert: String?
    @Option(help: "PEM private key for --tls-cert.") var tlsKey: String?

    func validate() throws {
        func seconds(_ name: String, _ v: Double, max: Double) throws {
            guard v.isFinite, v > 0, v <= max else { throw ValidationError("--\(name) must be a number of seconds in (0, \(Int(max))], got \(v)") }
        }
        func count(_ name: String, _ v: Int, _ range: ClosedRange<Int>) throws {
            guard range.contains(v) else { throw ValidationError("--\(name) must be in \(range.lowerBound)...\(range.upperBound), got \(v)") }
        }
        try count("port", port, 0...65535)
        try count("max-body-bytes", maxBodyBytes, 1...(16 << 30))
        try count("max-output-elements", maxOutputElements, 1...(1 << 36))
        if let maxRequestMemory { try count("max-request-memory", maxRequestMemory, (1 << 20)...(1 << 50)) }
        guard maxRequestGflop.isFinite, maxRequestGflop > 0, maxRequestGflop <= 1e9 else {
            throw ValidationError("--max-request-gflop must be a positive number up to 1e9, got \(maxRequestGflop)")
        }
        try count("max-layers", maxLayers, 1...1_000_000)
        guard inlineMs.isFinite, inlineMs >= 0, inlineMs <= 100 else {
            throw ValidationError("--inline-ms must be a number of milliseconds in [0, 100] (0 turns inline computation off), got \(inlineMs)")
        }
        if let memoryLimit {
            try count("memory-limit", memoryLimit, (16 << 20)...(1 << 50))
            if let maxRequestMemory, maxRequestMemory > memoryLimit {
                throw ValidationError("--max-request-memory (\(maxRequestMemory)) must not exceed --memory-limit (\(memoryLimit))")
            }
        }
        if let workers { try count("workers", workers, 1...1024) }
        try count("max-queued", maxQueued, 0...100_000)
        try seconds("deadline", deadline, max: 86_400)
        try seconds("body-timeout", bodyTimeout, max: 86_400)
        try seconds("write-timeout", writeTimeout, max: 86_400)
        try seconds("benchmark-max-seconds", benchmarkMaxSeconds, max: 3600)
        try count("max-connections", maxConnections, 1...1_000_000)
        try count("max-models", maxModels, 1...10_000_000)
        try count("max-registry-bytes", maxRegistryBytes, (1 << 20)...(1 << 50))
        try count("blas-threads", blasThreads, 1...256)
        try count("threads-per-request", threadsPerRequest, 1...256)
        for origin in origins where origin != "*" {
            guard origin.hasPrefix("http://") || origin.hasPrefix("https://"), !origin.hasSuffix("/") else {
                throw ValidationError("--allow-origin takes origins such as https://notebook.example.org (scheme and host, no path) or *, got \(origin)")
            }
        }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
    }

    var origins: [String] { Self.list(allowOrigin) }

    /// A repeatable option whose values may also be comma-separated, as one list.
    static func list(_ values: [String]) -> [String] {
        values.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }.filter { !$0.isEmpty }
    }

    func run() async throws {
        MemoryPolicy.keepLargeBlocks()
        var config = ServerConfiguration()
        config.host = host
        config.port = port
        config.dataDirectory = dataDir
        config.modelsDirectory = modelsDir
        config.apiKey = apiKey ?? ProcessInfo.processInfo.environment["GRADSERVE_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        config.maxBodyBytes = maxBodyBytes
        config.maxOutputElements = maxOutputElements
        config.maxRequestGFLOP = maxRequestGflop
        config.maxLayers = maxLayers
        if let memoryLimit {
            config.memoryLimit = memoryLimit
            let physical = Int(clamping: ProcessInfo.processInfo.physicalMemory)
            if memoryLimit > physical {
                FileHandle.standardError.write(
                    Data(
                        "gradserve: warning: --memory-limit \(memoryLimit) is above this machine's \(physical) bytes of memory; the budget cannot prevent an OOM kill\n"
                            .utf8))
            }
        }
        config.maxRequestMemory = maxRequestMemory ?? min(1 << 30, config.memoryLimit)
        if config.maxRequestMemory > config.memoryLimit {
            throw ValidationError(
                "--max-request-memory (\(config.maxRequestMemory) bytes) is above the memory budget (\(config.memoryLimit) bytes, 80% of this machine's limit); lower it or set --memory-limit"
            )
        }
        config.workers = workers ?? max(1, ProcessInfo.processInfo.activeProcessorCount)
        config.maxQueued = maxQueued
        config.deadlineSeconds = deadline
        config.bodyTimeoutSeconds = bodyTimeout
        config.writeTimeoutSeconds = writeTimeout
        config.maxConnections = maxConnections
        config.allowedOrigins = origins
        config.allowedHosts = Self.list(allowedHosts).map { $0.lowercased() }
        config.maxModels = maxModels
        config.maxRegistryBytes = maxRegistryBytes
        config.blasThreads = blasThreads
        config.threadsPerRequest = threadsPerRequest
        config.inlineMilliseconds = inlineMs
        config.benchmarkMaxSeconds = benchmarkMaxSeconds
        config.tlsCertificatePath = tlsCert
        config.tlsKeyPath = tlsKey
        let metrics = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics))
        let drain = Drain()
        let app = try await buildApplication(config, metrics: metrics, drain: drain)
        // SIGTERM and SIGINT drain first (DrainService), then stop the server gracefully.
        let group = ServiceGroup(
            configuration: .init(
                services: [
                    .init(service: app),
                    .init(
                        service: DrainService(drain: drain, bound: .seconds(config.deadlineSeconds + 5), logger: Logger(label: "gradserve")),
                        successTerminationBehavior: .gracefullyShutdownGroup),
                ],
                logger: Logger(label: "gradserve")))
        try await group.run()
    }
}

/// Byte sizes on the command line: `1073741824`, `512M`, `1G`, `1GiB`, `64KiB` (binary units).
enum ByteSize {
    static func parse(_ text: String) throws -> Int {
        let t = text.trimmingCharacters(in: .whitespaces)
        let units: [(String, Int)] = [
            ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10), ("TB", 40), ("GB", 30), ("MB", 20), ("KB", 10), ("T", 40), ("G", 30), ("M", 20),
            ("K", 10), ("B", 0),
        ]
        for (suffix, shift) in units where t.uppercased().hasSuffix(suffix.uppercased()) {
            let number = t.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)
            guard let v = Double(number), v.isFinite, v >= 0, v * Double(1 << shift) < 9e18 else { break }
            return Int(v * Double(1 << shift))
        }
        guard let v = Int(t), v >= 0 else { throw ValidationError("expected a byte size such as 1073741824, 512M or 1GiB, got \(text)") }
        return v
    }
}

/// `gradserve floor`: the transport floor (``TransportFloor``) for `bench/transport.py`.
struct FloorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "floor",
        abstract: "Serve the transport floor: the same HTTP stack, no computation (answers stored with PUT /floor/{key}); for bench/transport.py.")

    @Option(help: "Interface to bind.") var host = "127.0.0.1"
    @Option(parsing: .unconditional, help: "Port to listen on (0: any free port).") var port = 8081

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535, got \(port)") }
    }

    func run() async throws {
        let app = TransportFloor.application(host: host, port: port)
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

    @Option(parsing: .unconditional, help: "Timed iterations per ToyMLP workload.") var iterations = 50
    @Option(parsing: .unconditional, help: "Iterations of the seed nn.Linear(1000, 1000) loop.") var seedIterations = 500
    @Option(parsing: .unconditional, help: "Iterations of the one-row-at-a-time Jacobian loop.") var rowloopIterations = 3
    @Option(parsing: .unconditional, help: "Cores for one computation: rows split across them, one OpenBLAS thread each.") var threads = 1
    @Option(parsing: .unconditional, help: "Stop a workload after this many seconds (at least 3 iterations run).") var maxSeconds: Double?
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
