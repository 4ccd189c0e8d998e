import GradCore

/// Everything the service can be told at start, with production defaults.
public struct ServerConfiguration: Sendable {
    /// Interface to bind.
    public var host = "127.0.0.1"
    /// Port to bind (0 picks a free one).
    public var port = 8080
    /// Where registered models persist.
    public var dataDirectory = "./data"
    /// A read-only directory of model files every replica loads at start (`--models-dir`), or nil.
    public var modelsDirectory: String?
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
    /// Milliseconds a computation may take on its connection's event loop (`--inline-ms`; 0:
    /// never). One runs there, skipping two thread hand-offs, when no other computation is running
    /// or queued (``ComputePool/admitAlone()``), its answer is binary, its plan is within
    /// ``inlineWorkLimit``, and the same model computed the same plan within this time before
    /// (``InlineHistory``). It bounds how long a health check on the same loop can wait.
    public var inlineMilliseconds = 2.0
    /// The static bound checked first, in ``ResourcePlan/work``'s FLOP-equivalents (~0.01 ns each);
    /// nil: 1.25 × 10⁸ per millisecond of ``inlineMilliseconds`` (the estimate runs about 2.5× above
    /// the time of dense models, so this lets them use half the limit; it is what holds when the
    /// values make a plan slower than it was measured).
    public var inlineWorkLimit: Double? = nil

    /// Whether computations may run on an event loop at all (not with row chunks).
    var computesInline: Bool { inlineMilliseconds > 0 && threadsPerRequest == 1 }

    /// ``inlineWorkLimit``, or its default.
    var inlineWork: Double { inlineWorkLimit ?? inlineMilliseconds * 1.25e8 }
    /// Upper bound on the run time of one `/v1/benchmark` request, in seconds.
    public var benchmarkMaxSeconds = 30.0
    /// Bearer token required on `/v1/*` when set.
    public var apiKey: String?
    /// Bytes one request may hold at its peak (body, tensors, intermediates, answer); 422 above.
    /// By default 1 GiB, or the whole memory budget when that is smaller.
    public var maxRequestMemory = min(1 << 30, MemoryBudget.defaultLimit())
    /// GFLOP one request may compute; 422 above.
    public var maxRequestGFLOP = 1000.0
    /// Layers a posted model may have; 422 above.
    public var maxLayers = 1024
    /// Bytes all requests together may hold (see ``MemoryBudget``); 503 when full.
    public var memoryLimit = MemoryBudget.defaultLimit()
    /// Seconds a client has to send a whole request body after its head (408 after).
    public var bodyTimeoutSeconds = 30.0
    /// Seconds an answer may wait for the client to read it before the connection is closed.
    public var writeTimeoutSeconds = 60.0
    /// Open connections at most; more are closed at once.
    public var maxConnections = 1024
    /// Seconds of idleness after which freed memory is given back to the kernel.
    public var trimIdleSeconds = 2.0
    /// Origins (`scheme://host[:port]`) whose browser requests are served; requests with any
    /// other `Origin` get 403. `*` allows every origin. Clients that send no `Origin` (curl,
    /// Python) are not affected.
    public var allowedOrigins: [String] = []
    /// Host names (the `Host` header, without port) the server answers to; empty: any. Guards a
    /// keyless server on loopback against DNS rebinding.
    public var allowedHosts: [String] = []
    /// Models the registry may hold; 507 above.
    public var maxModels = 10_000
    /// Bytes the registry's model files may take together; 507 above.
    public var maxRegistryBytes = 4 << 30
    /// PEM certificate chain and private key: with both, the server speaks HTTPS only.
    public var tlsCertificatePath: String?
    /// PEM private key for `tlsCertificatePath`; nil serves plain HTTP.
    public var tlsKeyPath: String?

    /// The defaults.
    public init() {}

    /// When a request that arrived at `arrival` must be answered (`extra` seconds more for benchmarks).
    func deadline(from arrival: ContinuousClock.Instant = .now, extra: Double = 0) -> ContinuousClock.Instant {
        arrival + .milliseconds(Int64((deadlineSeconds + extra) * 1000))
    }
}
