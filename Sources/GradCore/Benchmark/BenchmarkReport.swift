/// A timing report: the machine and one result per workload and method.
public struct BenchmarkReport: Sendable, Codable, Equatable {
    /// Where it ran.
    public var machine: MachineInfo
    /// One timing per workload.
    public var results: [TimingResult]

    /// Creates a report.
    public init(machine: MachineInfo, results: [TimingResult]) {
        self.machine = machine
        self.results = results
    }

    /// A readable table.
    public var table: String {
        var lines = [
            "CPU: \(machine.cpu) (\(machine.cores) cores)",
            "BLAS: \(machine.blas.library) \(machine.blas.version), core \(machine.blas.core), \(machine.blas.threads) thread(s)",
            "measured float32 GEMM peak: \(format(machine.peakGFLOPs, 1)) GFLOP/s",
            "",
            pad("workload", 36) + pad("iters", 7) + pad("min ms", 11) + pad("median ms", 11) + pad("p95 ms", 11) + pad("GFLOP/s", 9) + "peak",
        ]
        for r in results {
            lines.append(
                pad(r.name, 36) + pad("\(r.iterations)", 7) + pad(format(r.minMs, 3), 11) + pad(format(r.medianMs, 3), 11)
                    + pad(format(r.p95Ms, 3), 11) + pad(r.gflops.map { format($0, 1) } ?? "-", 9)
                    + (r.peakShare.map { format($0 * 100, 0) + "%" } ?? "-"))
        }
        return lines.joined(separator: "\n")
    }

    private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
    private func format(_ v: Double, _ digits: Int) -> String {
        var p = 1.0
        for _ in 0..<digits { p *= 10 }
        let r = (v * p).rounded() / p
        if digits == 0 { return String(Int(r)) }
        var s = String(r)
        if let dot = s.firstIndex(of: ".") {
            let decimals = s.distance(from: dot, to: s.endIndex) - 1
            if decimals < digits { s += String(repeating: "0", count: digits - decimals) }
        }
        return s
    }
}
