import GradCore

/// Everything the service can be told at start, with production defaults.
public struct ServerConfiguration: Sendable {
    /// Interface to bind.
    public var host = "127.0.0.1"
    /// Port to bind (0 picks a free one).
    public var port = 8080
    /// Where registered models persist.
    public var dataDirectory = "./data"
    /// Largest request body in bytes (413 above).
    public var maxBodyBytes = 256 << 20
    /// Largest answer, in numbers (422 above, before computing).
    public var maxOutputElements = 1 << 24
    /// Compute workers (requests computed at once).
    public var workers = 2
    /// Requests that may wait for a worker before the service answers 503.
    public var maxQueued = 64
    /// Seconds a request may take from arrival to answer (504 after).
    public var deadlineSeconds = 60.0
    /// OpenBLAS threads per call (1 by default: requests run in parallel instead).
    public var blasThreads = 1
    /// Row chunks computed at once within one request (see `Parallel`).
    public var threadsPerRequest = 1
    /// Upper bound on the run time of one `/v1/benchmark` request, in seconds.
    public var benchmarkMaxSeconds = 30.0
    /// Bearer token required on `/v1/*` when set.
    public var apiKey: String?
    /// PEM certificate chain and private key: with both, the server speaks HTTPS only.
    public var tlsCertificatePath: String?
    public var tlsKeyPath: String?

    /// The defaults.
    public init() {}

    /// When a request that arrived at `arrival` must be answered (`extra` seconds more for benchmarks).
    func deadline(from arrival: ContinuousClock.Instant = .now, extra: Double = 0) -> ContinuousClock.Instant {
        arrival + .milliseconds(Int64((deadlineSeconds + extra) * 1000))
    }
}
