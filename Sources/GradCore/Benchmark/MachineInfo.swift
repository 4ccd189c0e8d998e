#if canImport(Glibc)
    import Glibc
#endif

/// The machine a report was measured on.
public struct MachineInfo: Sendable, Codable, Equatable {
    /// The BLAS library in use.
    public struct BLASInfo: Sendable, Codable, Equatable {
        /// `OpenBLAS`.
        public var library: String
        /// Its version.
        public var version: String
        /// The CPU kernel set it chose.
        public var core: String
        /// OpenBLAS threads per call during the workloads.
        public var threads: Int
        /// Its build configuration string.
        public var config: String
    }

    /// CPU model name.
    public var cpu: String
    /// Logical processors available.
    public var cores: Int
    /// The BLAS library in use.
    public var blas: BLASInfo
    /// Best float32 GEMM rate measured here at `blas.threads` threads (GFLOP/s).
    public var peakGFLOPs: Double

    enum CodingKeys: String, CodingKey {
        case cpu, cores, blas
        case peakGFLOPs = "peak_gflops"
    }

    /// Describes this machine, measuring the float32 GEMM peak (about 0.3 s).
    public static func current(measurePeak: Bool = true) -> MachineInfo {
        MachineInfo(
            cpu: cpuModel(), cores: BLASRuntime.processors,
            blas: BLASInfo(
                library: "OpenBLAS", version: BLASRuntime.version, core: BLASRuntime.coreName, threads: BLASRuntime.threads, config: BLASRuntime.config),
            peakGFLOPs: measurePeak ? measuredPeak() : 0)
    }

    static func cpuModel() -> String { CPUInfo.field("model name") ?? "unknown" }

    /// Best of several 1024³ float32 GEMMs, in GFLOP/s.
    static func measuredPeak() -> Double {
        let n = 1024
        let a = [Float](repeating: 0.5, count: n * n)
        let b = [Float](repeating: 0.25, count: n * n)
        var c = [Float](repeating: 0, count: n * n)
        var best = Double.infinity
        let clock = ContinuousClock()
        for _ in 0..<8 {
            let t0 = clock.now
            a.withUnsafeBufferPointer { ap in
                b.withUnsafeBufferPointer { bp in
                    c.withUnsafeMutableBufferPointer { cp in
                        BLAS.gemm(
                            MatrixView(ap.baseAddress!, rows: n, cols: n), MatrixView(bp.baseAddress!, rows: n, cols: n),
                            into: MutableMatrixView(cp.baseAddress!, rows: n, cols: n))
                    }
                }
            }
            best = min(best, Stopwatch.seconds(clock.now - t0))
        }
        return 2 * Double(n * n * n) / best / 1e9
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let c = s.first, set.contains(c) { s = s.dropFirst() }
        while let c = s.last, set.contains(c) { s = s.dropLast() }
        return String(s)
    }
}
