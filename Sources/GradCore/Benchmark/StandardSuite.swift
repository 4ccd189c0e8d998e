/// The standard workloads of `gradserve bench`: the seed's `nn.Linear(1000, 1000)` loop and the
/// ToyMLP forward / VJP / JVP / Jacobian / divergence cells.
public struct StandardSuite: Sendable {
    /// Timed iterations per ToyMLP workload.
    public var iterations = 50
    /// Iterations of the seed loop (the seed ran 500).
    public var seedIterations = 500
    /// Iterations of the one-row-at-a-time Jacobian (slow by design).
    public var rowLoopIterations = 3
    /// Upper bound on seconds per workload (at least 3 iterations run).
    public var maxSecondsPerWorkload = Double.infinity
    /// Only workloads whose name contains one of these (all when empty).
    public var only: [String] = []
    /// Cores for one request: row chunks at once, one OpenBLAS thread each (see ``Parallel``).
    public var threads = 1

    /// Creates the suite with defaults.
    public init() {}

    func wanted(_ name: String) -> Bool { only.isEmpty || only.contains { name.contains($0) } }

    /// Runs the selected workloads at the current BLAS thread setting.
    public func run(machine: MachineInfo? = nil) throws -> BenchmarkReport {
        try Parallel.run(threads: threads) { try runWorkloads(machine: machine) }
    }

    private func runWorkloads(machine: MachineInfo?) throws -> BenchmarkReport {
        // The peak is measured on all `threads` cores; the workloads then split rows across them.
        BLASRuntime.setThreads(threads)
        var machine = machine ?? .current()
        machine.blas.threads = 1
        BLASRuntime.setThreads(1)
        var results: [TimingResult] = []
        let peak = machine.peakGFLOPs > 0 ? machine.peakGFLOPs : nil
        func time(_ name: String, _ op: String, _ method: String, batch: Int, iterations: Int, flops: Double?, _ body: () throws -> Void) rethrows {
            guard wanted(name) else { return }
            results.append(
                try Stopwatch.measure(
                    name: name, operation: op, method: method, batch: batch, iterations: iterations,
                    warmup: iterations > 3 ? 3 : 1, maxSeconds: maxSecondsPerWorkload, flops: flops, peakGFLOPs: peak, body))
        }

        if wanted("seed_linear") {
            var rng = SplitMix64(seed: 3)
            func u() -> Float { Float(Double(rng.next() >> 11) / Double(1 << 53) * 0.06 - 0.03) }
            let lin = Linear<Float>(
                weight: Tensor(shape: [1000, 1000], scalars: (0..<1_000_000).map { _ in u() }),
                bias: Tensor(shape: [1000], scalars: (0..<1000).map { _ in u() }), weightName: "weight", biasName: "bias")
            let x = (0..<1_000_000).map { _ in u() * 30 }
            var y = [Float](repeating: 0, count: 1_000_000)
            let chunks = Parallel.chunks(1000) ?? [0..<1000]
            try time("seed_linear", "forward", "gemm", batch: 1000, iterations: seedIterations, flops: 2e9 + 1e6) {
                try x.withUnsafeBufferPointer { xp in
                    try y.withUnsafeMutableBufferPointer { yp in
                        let (xs, ys) = (Int(bitPattern: xp.baseAddress!), Int(bitPattern: yp.baseAddress!))
                        _ = try Parallel.map(chunks) { (r) throws(GradError) in
                            let rowX = UnsafePointer<Float>(bitPattern: xs)! + r.lowerBound * 1000
                            let rowY = UnsafeMutablePointer<Float>(bitPattern: ys)! + r.lowerBound * 1000
                            lin.forward(rowX, rows: r.count, into: rowY)
                        }
                    }
                }
            }
        }

        let model: Model<Float> = ToyMLP.make()
        let d = 784
        let in256: Inputs<Float> = ToyMLP.inputs(batch: 256)
        let v256 = Tensor<Float>(shape: [256, d], scalars: in256.x.scalars.map { $0 * 0.5 })
        let fwd256 = model.forwardFlops(batch: 256)
        let lastLayerFlops = 2 * 256.0 * 64 * Double(d)
        try time("toymlp_forward_b256", "forward", "forward", batch: 256, iterations: iterations, flops: fwd256) { _ = try model.forward(in256) }
        // Derivatives only, as torch.autograd.grad / torch.func.jvp return them (and as JAX's jit
        // prunes the unused primal output): the service's "return_outputs": false.
        try time("toymlp_vjp_b256", "vjp", "reverse", batch: 256, iterations: iterations, flops: 2 * fwd256 - lastLayerFlops) {
            _ = try model.vjp(in256, gradOutputs: v256, returnOutputs: false)
        }
        try time("toymlp_jvp_b256", "jvp", "forward", batch: 256, iterations: iterations, flops: 2 * fwd256 - lastLayerFlops) {
            _ = try model.jvp(in256, tangentX: v256, tangentT: nil, returnOutputs: false)
        }
        for b in [3, 16] {
            let inputs: Inputs<Float> = ToyMLP.inputs(batch: b)
            for mode in [JacobianMode.reverse, .forward, .auto] {
                let used = model.resolve(mode, batch: b, d: d, wantX: true, wantT: false)
                let flops = model.forwardFlops(batch: b) + model.jacobianFlops(batch: b, d: d, wantX: true, wantT: false, mode: used)
                try time(
                    "toymlp_jacobian_\(mode.rawValue)_b\(b)", "jacobian", mode == .auto ? "auto(\(used.rawValue))" : mode.rawValue, batch: b,
                    iterations: iterations, flops: flops
                ) {
                    _ = try model.jacobian(inputs, mode: mode)
                }
            }
        }
        let in16: Inputs<Float> = ToyMLP.inputs(batch: 16)
        try time("toymlp_divergence_exact_b16", "divergence", "exact", batch: 16, iterations: iterations, flops: nil) {
            _ = try model.divergence(in16)
        }
        try time("toymlp_divergence_hutchinson_b16", "divergence", "hutchinson(16)", batch: 16, iterations: iterations, flops: nil) {
            _ = try model.divergence(in16, method: .hutchinson(probes: 16, seed: 0))
        }
        let in3: Inputs<Float> = ToyMLP.inputs(batch: 3)
        try time("toymlp_jacobian_rowloop_b3", "jacobian", "rowloop", batch: 3, iterations: rowLoopIterations, flops: nil) {
            _ = try model.rowLoopJacobian(in3)
        }
        return BenchmarkReport(machine: machine, results: results)
    }
}
