/// Per-iteration timings of one workload and the statistics the reports quote.
public struct TimingResult: Sendable, Codable, Equatable {
    /// Workload name, e.g. `toymlp_vjp_b256`.
    public var name: String
    /// `forward`, `vjp`, `jvp`, `jacobian`, `divergence`.
    public var operation: String
    /// `gemm`, `reverse`, `forward`, `auto`, `rowloop`, `exact`, `hutchinson`, …
    public var method: String
    /// Batch size B.
    public var batch: Int
    /// Timed iterations.
    public var iterations: Int
    /// Seconds of all timed iterations.
    public var totalSeconds: Double
    /// Fastest iteration.
    public var minMs: Double
    /// Median iteration.
    public var medianMs: Double
    /// 95th-percentile iteration.
    public var p95Ms: Double
    /// Achieved GFLOP/s at the median, when the FLOP count is known.
    public var gflops: Double?
    /// `gflops` over the machine's measured peak.
    public var peakShare: Double?

    enum CodingKeys: String, CodingKey {
        case name, operation, method, batch, iterations
        case totalSeconds = "total_s"
        case minMs = "min_ms"
        case medianMs = "median_ms"
        case p95Ms = "p95_ms"
        case gflops
        case peakShare = "peak_share"
    }
}

/// Runs a body repeatedly and summarizes its timings.
public enum Stopwatch {
    /// Times `body` `iterations` times after `warmup` untimed runs; stops early once `maxSeconds`
    /// have been spent (keeping at least 3 iterations).
    public static func measure(
        name: String, operation: String, method: String, batch: Int, iterations: Int, warmup: Int = 2,
        maxSeconds: Double = .infinity, flops: Double? = nil, peakGFLOPs: Double? = nil, _ body: () throws -> Void
    ) rethrows -> TimingResult {
        for _ in 0..<warmup { try body() }
        var samples: [Double] = []
        samples.reserveCapacity(iterations)
        let clock = ContinuousClock()
        let start = clock.now
        for i in 0..<max(1, iterations) {
            let t0 = clock.now
            try body()
            samples.append(seconds(clock.now - t0))
            if i >= 2, seconds(clock.now - start) > maxSeconds { break }
        }
        let total = samples.reduce(0, +)
        samples.sort()
        let median = samples.count % 2 == 1 ? samples[samples.count / 2] : (samples[samples.count / 2 - 1] + samples[samples.count / 2]) / 2
        let p95 = samples[min(samples.count - 1, Int((Double(samples.count) * 0.95).rounded(.up)) - 1)]
        let gflops = flops.map { $0 / median / 1e9 }
        return TimingResult(
            name: name, operation: operation, method: method, batch: batch, iterations: samples.count,
            totalSeconds: total, minMs: samples[0] * 1e3, medianMs: median * 1e3, p95Ms: p95 * 1e3,
            gflops: gflops, peakShare: gflops.flatMap { g in peakGFLOPs.map { g / $0 } })
    }

    /// A duration in seconds.
    public static func seconds(_ d: Duration) -> Double {
        let (s, atto) = d.components
        return Double(s) + Double(atto) * 1e-18
    }
}
