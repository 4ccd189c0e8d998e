/// Parameter cotangents collected by a reverse sweep, by name, each `[K, …shape]` flattened.
struct ParameterGradients<S: BLASScalar> {
    let k: Int
    var order: [String] = []
    var values: [String: (shape: [Int], scalars: [S])] = [:]

    /// Adds `grad` (K blocks of `count`) into the entry `name` (a weight used twice accumulates, as in torch).
    mutating func accumulate(_ name: String, shape: [Int], _ fill: (UnsafeMutablePointer<S>) -> Void) {
        let n = k * shape.reduce(1, *)
        var fresh = [S](repeating: 0, count: n)
        fresh.withUnsafeMutableBufferPointer { fill($0.baseAddress!) }
        if var existing = values[name] {
            for i in 0..<n { existing.scalars[i] += fresh[i] }
            values[name] = existing
        } else {
            order.append(name)
            values[name] = (shape, fresh)
        }
    }
}

/// The cotangent of the concatenated input, split into its x part (`[rows, D]`) and its t
/// column (`[rows]`), flat.
struct InputCotangent<S: BLASScalar> {
    var x: Tensor<S>
    var t: Tensor<S>?

    init(x: Tensor<S>, t: Tensor<S>?) {
        self.x = x
        self.t = t
    }

    /// The halves ``Concat/vjp(_:rows:width:hasT:)`` splits a `[rows, D+1]` cotangent into.
    init(_ split: (x: [S], t: [S]?)) {
        self.init(x: Tensor(shape: [split.x.count], scalars: split.x), t: split.t.map { Tensor(shape: [$0.count], scalars: $0) })
    }
}

extension Model {
    /// Reverse sweep: pulls `rows` cotangent rows (`K·B`, in `order`) from the output of layer
    /// `top - 1` back to the input, through one GEMM per linear layer.
    ///
    /// - Parameters:
    ///   - seed: `[rows, widths[top]]` in row-major order (its own shape may split rows into `[K, B]`); read in place, copied only when an activation scales it.
    ///   - wantInput: whether to produce the input cotangent (skip the last GEMM when only parameters are asked).
    ///   - params: when given, parameter cotangents are accumulated per K block.
    func reverseSweep(
        seed: Tensor<S>, rows: Int, order: RowOrder, trace: ForwardTrace<S>, top: Int,
        wantInput: Bool, params: inout ParameterGradients<S>?
    ) throws(GradError) -> InputCotangent<S>? {
        let b = trace.batch
        let k = rows / b
        var g = seed
        var l = top - 1
        while l >= 0 {
            try Cancellation.checkpoint()
            switch layers[l] {
            case .activation:
                if let dv = trace.derivatives[l] {
                    let w = trace.widths[l]
                    g.withUnsafeMutableBufferPointer { gp in
                        dv.withUnsafeBufferPointer { Elementwise.scale(gp.baseAddress!, rows: rows, width: w, by: $0.baseAddress!, samples: b, order: order) }
                    }
                }
            case .linear(let lin):
                if params != nil {
                    collectParameterGradients(lin, g: g, k: k, order: order, trace: trace, layer: l, into: &params)
                }
                if l == 0 {
                    return wantInput ? splitInputCotangent(lin, g: g, rows: rows, d: trace.d) : nil
                }
                let inW = lin.inFeatures
                let next = [S](unsafeUninitializedCapacity: rows * inW) { out, n in
                    g.withUnsafeBufferPointer { lin.vjpInput($0.baseAddress!, rows: rows, into: out.baseAddress!, columns: 0..<inW, stride: inW) }
                    n = rows * inW
                }
                g = Tensor(shape: [rows * inW], scalars: next)
            }
            l -= 1
        }
        guard wantInput else { return nil }
        return InputCotangent(g.withUnsafeBufferPointer { Concat.vjp($0.baseAddress!, rows: rows, width: trace.d, hasT: hasT) })
    }

    /// The VJP of the first layer fused with the concat's VJP: `x̄ = Ȳ W[:, :D]` and `t̄ = Ȳ W[:, D]`,
    /// written straight into their own buffers (no `[rows, D+1]` intermediate and no split copy),
    /// a ``ResultArena``'s when one is installed: they are answers.
    private func splitInputCotangent(_ lin: Linear<S>, g: Tensor<S>, rows: Int, d: Int) -> InputCotangent<S> {
        let gx = Tensor<S>.result(shape: [rows * d]) { out in
            g.withUnsafeBufferPointer { lin.vjpInput($0.baseAddress!, rows: rows, into: out, columns: 0..<d, stride: d) }
        }
        guard hasT else { return InputCotangent(x: gx, t: nil) }
        let gt = Tensor<S>.result(shape: [rows]) { out in
            g.withUnsafeBufferPointer { gp in
                lin.weight.withUnsafeBufferPointer { w in
                    BLAS.gemv(MatrixView(gp.baseAddress!, rows: rows, cols: lin.outFeatures), x: w.baseAddress! + d, xStride: lin.inFeatures, into: out)
                }
            }
        }
        return InputCotangent(x: gx, t: gt)
    }

    private func collectParameterGradients(
        _ lin: Linear<S>, g: Tensor<S>, k: Int, order: RowOrder, trace: ForwardTrace<S>, layer l: Int,
        into params: inout ParameterGradients<S>?
    ) {
        let b = trace.batch
        let out = lin.outFeatures
        let ones = [S](repeating: 1, count: b)
        // Block kk of the cotangent: its B rows start at `start` with stride `stride`.
        func block(_ kk: Int) -> (start: Int, stride: Int) {
            order == .kMajor ? (kk * b * out, out) : (kk * out, k * out)
        }
        g.withUnsafeBufferPointer { gp in
            trace.layerInputs[l].withUnsafeBufferPointer { xp in
                ones.withUnsafeBufferPointer { op in
                    params!.accumulate(lin.weightName, shape: lin.weight.shape) { dst in
                        for kk in 0..<k {
                            let (s, st) = block(kk)
                            lin.vjpWeight(gp.baseAddress! + s, gyStride: st, samples: b, input: xp.baseAddress!, into: dst + kk * lin.weight.count)
                        }
                    }
                    if let name = lin.biasName {
                        params!.accumulate(name, shape: [out]) { dst in
                            for kk in 0..<k {
                                let (s, st) = block(kk)
                                lin.vjpBias(gp.baseAddress! + s, gyStride: st, samples: b, ones: op.baseAddress!, into: dst + kk * out)
                            }
                        }
                    }
                }
            }
        }
    }

    /// Forward (tangent) sweep: pushes `rows` tangent rows through layers `from..<to`, one GEMM per linear layer.
    func forwardSweep(tangents: [S], rows: Int, order: RowOrder, trace: ForwardTrace<S>, from: Int, to: Int) throws(GradError) -> [S] {
        var u = tangents
        for l in from..<to {
            try Cancellation.checkpoint()
            switch layers[l] {
            case .activation:
                if let dv = trace.derivatives[l] {
                    let w = trace.widths[l]
                    u.withUnsafeMutableBufferPointer { up in
                        dv.withUnsafeBufferPointer {
                            Elementwise.scale(up.baseAddress!, rows: rows, width: w, by: $0.baseAddress!, samples: trace.batch, order: order)
                        }
                    }
                }
            case .linear(let lin):
                let outW = lin.outFeatures
                u = [S](unsafeUninitializedCapacity: rows * outW) { out, n in
                    u.withUnsafeBufferPointer { lin.jvp(MatrixView($0.baseAddress!, rows: rows, cols: lin.inFeatures), into: out.baseAddress!) }
                    n = rows * outW
                }
            }
        }
        return u
    }
}
