/// Timing reports for a posted workload: the seed's `nn.Linear` loop or any model and operation.
public enum ModelBenchmark {
    /// The seed workload: `nn.Linear(in, out)` applied to x `[batch, in]`, float32.
    public static func linear(
        in inF: Int, out outF: Int, batch: Int, iterations: Int, maxSeconds: Double, peakGFLOPs: Double?
    ) -> TimingResult {
        var rng = SplitMix64(seed: 3)
        func u() -> Float { Float(Double(rng.next() >> 11) / Double(1 << 53) * 0.06 - 0.03) }
        let lin = Linear<Float>(
            weight: Tensor(shape: [outF, inF], scalars: (0..<(outF * inF)).map { _ in u() }),
            bias: Tensor(shape: [outF], scalars: (0..<outF).map { _ in u() }), weightName: "weight", biasName: "bias")
        let x = (0..<(batch * inF)).map { _ in u() }
        var y = [Float](repeating: 0, count: batch * outF)
        return Stopwatch.measure(
            name: "linear_\(inF)x\(outF)_b\(batch)", operation: "forward", method: "gemm", batch: batch, iterations: iterations,
            warmup: 1, maxSeconds: maxSeconds, flops: 2 * Double(batch) * Double(inF) * Double(outF), peakGFLOPs: peakGFLOPs
        ) {
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { lin.forward(xp.baseAddress!, rows: batch, into: $0.baseAddress!) }
            }
        }
    }

    /// The methods each operation compares.
    public static let methods: [String: [String]] = [
        "forward": ["forward"], "vjp": ["reverse"], "jvp": ["forward"],
        "jacobian": ["reverse", "forward", "auto", "rowloop"], "divergence": ["exact", "hutchinson"],
    ]

    /// Times `operation` on `model` with random inputs of `batch` rows, once per method.
    public static func run(
        _ model: AnyModel, operation: String, methods: [String], batch: Int, d: Int, iterations: Int, maxSeconds: Double,
        peakGFLOPs: Double?
    ) throws -> [TimingResult] {
        switch model {
        case .float32(let m): try run(m, operation, methods, batch, d, iterations, maxSeconds, peakGFLOPs)
        case .float64(let m): try run(m, operation, methods, batch, d, iterations, maxSeconds, peakGFLOPs)
        }
    }

    static func run<S: BLASScalar>(
        _ m: Model<S>, _ op: String, _ methods: [String], _ b: Int, _ d: Int, _ iterations: Int, _ maxSeconds: Double, _ peak: Double?
    ) throws -> [TimingResult] {
        var rng = SplitMix64(seed: 1)
        func r() -> S { S(Double(rng.next() >> 11) / Double(1 << 53) * 2 - 1) }
        let inputs = Inputs<S>(
            x: Tensor(shape: [b, d], scalars: (0..<(b * d)).map { _ in r() }),
            t: m.hasT ? Tensor(shape: [b], scalars: (0..<b).map { _ in r() }) : nil)
        try m.validate(inputs)
        let dOut = m.outputWidth(d: d)
        let v = Tensor<S>(shape: [b, dOut], scalars: (0..<(b * dOut)).map { _ in r() })
        let u = Tensor<S>(shape: [b, d], scalars: (0..<(b * d)).map { _ in r() })
        let fwd = m.forwardFlops(batch: b)
        var results: [TimingResult] = []
        for method in methods {
            let name = "\(op)_\(method)_b\(b)"
            func time(_ flops: Double?, _ its: Int = iterations, _ body: () throws -> Void) throws {
                results.append(
                    try Stopwatch.measure(
                        name: name, operation: op, method: method, batch: b, iterations: its, warmup: min(2, its), maxSeconds: maxSeconds,
                        flops: flops, peakGFLOPs: peak, body))
            }
            switch (op, method) {
            case ("forward", "forward"): try time(fwd) { _ = try m.forward(inputs) }
            case ("vjp", "reverse"): try time(2 * fwd) { _ = try m.vjp(inputs, gradOutputs: v) }
            case ("jvp", "forward"): try time(2 * fwd) { _ = try m.jvp(inputs, tangentX: u, tangentT: nil) }
            case ("jacobian", "reverse"), ("jacobian", "forward"), ("jacobian", "auto"):
                let mode = JacobianMode(rawValue: method)!
                let used = m.resolve(mode, batch: b, d: d, wantX: true, wantT: false)
                try time(fwd + m.jacobianFlops(batch: b, d: d, wantX: true, wantT: false, mode: used)) { _ = try m.jacobian(inputs, mode: mode) }
            case ("jacobian", "rowloop"): try time(nil, min(iterations, 3)) { _ = try m.rowLoopJacobian(inputs) }
            case ("divergence", "exact"): try time(nil) { _ = try m.divergence(inputs) }
            case ("divergence", "hutchinson"): try time(nil) { _ = try m.divergence(inputs, method: .hutchinson(probes: 16, seed: 0)) }
            default:
                throw GradError.invalid("methods", "\"\(method)\" is not a method of \(op); expected \(Self.methods[op] ?? [])")
            }
        }
        return results
    }
}
