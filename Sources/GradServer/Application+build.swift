import GradCore
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import Prometheus
import ServiceLifecycle

/// Builds the application: registry, compute pool, memory budget, routes and the HTTP server around them.
public func buildApplication(
    _ configuration: ServerConfiguration, metrics: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), logger: Logger? = nil,
    drain: Drain = Drain()
) async throws -> some ApplicationProtocol {
    var logger = logger ?? Logger(label: "gradserve")
    if logger.logLevel > .info { logger.logLevel = .info }
    BLASRuntime.setThreads(configuration.blasThreads)
    let registry = try ModelRegistry(
        dataDirectory: configuration.dataDirectory, modelsDirectory: configuration.modelsDirectory, logger: logger,
        quota: .init(maxModels: configuration.maxModels, maxBytes: configuration.maxRegistryBytes))
    let pool = ComputePool(
        workers: configuration.workers, maxQueued: configuration.maxQueued, threadsPerJob: configuration.threadsPerRequest,
        inline: configuration.computesInline, metrics: metrics)
    let memory = MemoryBudget(limit: configuration.memoryLimit, metrics: metrics)
    drain.attach(pool)
    let router = buildRouter(configuration, registry: registry, pool: pool, memory: memory, metrics: metrics, drain: drain)
    let connections = ConnectionGuard.Counter(limit: configuration.maxConnections)
    let writeDuration = metrics.makeDurationHistogram(descriptor: HTTPMetricNames.writeDuration, buckets: HTTPMetricNames.buckets)
    let bodyTimeout = Duration.milliseconds(Int64(configuration.bodyTimeoutSeconds * 1000))
    let writeTimeout = Duration.milliseconds(Int64(configuration.writeTimeoutSeconds * 1000))
    var server: HTTPServerBuilder = .http1(
        configuration: .init(
            additionalChannelHandlers: [
                ReadSize(),
                ConnectionGuard(counter: connections, bodyTimeout: bodyTimeout, writeTimeout: writeTimeout, writeDuration: writeDuration),
            ],
            idleTimeout: .seconds(120)))
    if let certPath = configuration.tlsCertificatePath, let keyPath = configuration.tlsKeyPath {
        let chain: [NIOSSLCertificateSource]
        let key: NIOSSLPrivateKey
        do { chain = try NIOSSLCertificate.fromPEMFile(certPath).map { .certificate($0) } } catch {
            throw StartupError(message: "--tls-cert \(certPath): cannot read a PEM certificate chain (\(error))")
        }
        do { key = try NIOSSLPrivateKey(file: keyPath, format: .pem) } catch {
            throw StartupError(message: "--tls-key \(keyPath): cannot read a PEM private key (\(error))")
        }
        server = try .tls(server, tlsConfiguration: .makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key)))
    }
    let trimmer = HeapTrimmer(pool: pool, idle: .milliseconds(Int64(configuration.trimIdleSeconds * 1000)))
    return Application(
        router: router,
        server: server,
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "gradserve/\(GradserveVersion.current)"),
        services: [ComputePoolService(pool: pool, trimmer: trimmer)],
        logger: logger)
}

/// The routes: `/healthz`, `/readyz`, `/metrics`, `/openapi.yaml` open; `/v1/*` behind the optional API key.
public func buildRouter(
    _ configuration: ServerConfiguration, registry: ModelRegistry, pool: ComputePool, memory: MemoryBudget, metrics: PrometheusCollectorRegistry,
    drain: Drain = Drain()
) -> Router<GradRequestContext> {
    let router = Router(context: GradRequestContext.self)
    router.add(middleware: RequestMetricsMiddleware(registry: metrics))
    router.add(middleware: ProblemMiddleware(allowedMethods: allowedMethods))
    router.add(middleware: OriginMiddleware(allowedOrigins: configuration.allowedOrigins, allowedHosts: configuration.allowedHosts))
    if !configuration.allowedOrigins.isEmpty {
        router.add(
            middleware: CORSMiddleware(
                allowOrigin: .originBased, allowHeaders: [.accept, .authorization, .contentType], allowMethods: [.get, .post, .delete, .options],
                exposedHeaders: ["Server-Timing", "Location", "Retry-After"]))
    }
    let pipeline = RequestPipeline(pool: pool, memory: memory, configuration: configuration, drain: drain)
    let runner = OperationRunner(registry: registry, maxLayers: configuration.maxLayers)
    let service = ServiceController(pool: pool, memory: memory, metrics: metrics, configuration: configuration, registry: registry, drain: drain)
    service.addRoutes(to: router)
    let v1 = router.group("v1")
    if let key = configuration.apiKey { v1.add(middleware: AuthMiddleware(apiKey: key)) }
    service.addV1Routes(to: v1)
    v1.addRoutes(ComputeController(pipeline: pipeline, runner: runner, metrics: metrics).endpoints)
    v1.addRoutes(ModelsController(registry: registry, pipeline: pipeline).endpoints, atPath: "models")
    BenchmarkController(pipeline: pipeline, runner: runner).addRoutes(to: v1)
    TesseractController(registry: registry, pipeline: pipeline).addRoutes(to: router)
    UMBridgeController(registry: registry, pipeline: pipeline).addRoutes(to: router)
    return router
}

/// The methods each path answers, for 405 with `Allow`.
@Sendable func allowedMethods(_ path: String) -> [HTTPRequest.Method] {
    let p = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
    switch p {
    case "/healthz", "/readyz", "/metrics", "/openapi.yaml", "/v1/info": return [.get]
    case "/v1/benchmark": return [.post]
    case _ where Operation.allCases.contains(where: { "/v1/\($0.rawValue)" == p }): return [.post]
    case "/v1/models": return [.get, .post]
    default:
        if p.hasPrefix("/v1/models/"), !p.dropFirst("/v1/models/".count).contains("/") { return [.get, .delete] }
        let parts = p.split(separator: "/")  // empty components dropped, as the router does
        guard parts.count == 3 else { return [] }
        switch (parts[0], parts[2]) {
        case ("tesseract", "health"), ("tesseract", "openapi.json"), ("umbridge", "Info"): return [.get]
        case ("tesseract", "apply"), ("tesseract", "abstract_eval"), ("tesseract", "vector_jacobian_product"),
            ("tesseract", "jacobian_vector_product"), ("tesseract", "jacobian"), ("umbridge", "ModelInfo"), ("umbridge", "InputSizes"),
            ("umbridge", "OutputSizes"), ("umbridge", "Evaluate"), ("umbridge", "Gradient"), ("umbridge", "ApplyJacobian"),
            ("umbridge", "ApplyHessian"):
            return [.post]
        default: return []
        }
    }
}

/// Gives idle memory back while running; stops the compute threads when the application shuts down.
struct ComputePoolService: Service {
    let pool: ComputePool
    let trimmer: HeapTrimmer
    func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await trimmer.run() }
            try? await gracefulShutdown()
            group.cancelAll()
        }
        try await pool.shutdown()
    }
}

/// A configuration problem found while starting (a certificate that cannot be read, …).
public struct StartupError: Error, CustomStringConvertible {
    /// What is wrong with the configuration, naming the flag.
    public var message: String
    /// The message.
    public var description: String { message }
}
