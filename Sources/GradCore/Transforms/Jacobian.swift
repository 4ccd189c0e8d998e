/// How a per-sample Jacobian is computed.
public enum JacobianMode: String, Sendable, CaseIterable {
    /// The cheaper of the two by FLOP count; ties go to reverse.
    case auto
    /// One reverse sweep with K = D' identity cotangents.
    case reverse
    /// One forward sweep with K = D (+1 for t) identity tangents.
    case forward
}

/// The answer of a Jacobian request.
public struct JacobianResult<S: BLASScalar>: Sendable {
    /// `[B, D']`.
    public var outputs: Tensor<S>
    /// `[B, D', D]`: `x[b, i, j] = ∂y_i/∂x_j` at sample b, when asked.
    public var x: Tensor<S>?
    /// `[B, D']`: `∂y_i/∂t` at sample b, when asked.
    public var t: Tensor<S>?
    /// The sweep that ran (`reverse` or `forward`).
    public var mode: JacobianMode
}

extension Model {
    /// FLOP count of the GEMMs a Jacobian sweep runs (the identity seed through the first or last
    /// linear layer costs no GEMM).
    public func jacobianFlops(batch b: Int, d: Int, wantX: Bool, wantT: Bool, mode: JacobianMode) -> Double {
        let k = Double(mode == .forward ? (wantX ? d : 0) + (wantT ? 1 : 0) : outputWidth(d: d))
        var flops = 0.0
        for (l, layer) in layers.enumerated() {
            guard case .linear(let lin) = layer else { continue }
            if mode == .forward, l == 0 { continue }
            if mode == .reverse, l == layers.count - 1 { continue }
            flops += 2 * Double(b) * k * Double(lin.inFeatures) * Double(lin.outFeatures)
        }
        return flops
    }

    /// The mode `auto` resolves to: the sweep with fewer seeds, as the contract states it —
    /// reverse (K = D') when D' ≤ K_forward (D, plus 1 when t is asked for), ties to reverse.
    /// Both sweeps run the same layers, so the seed count is the FLOP ratio up to the one GEMM
    /// the identity seed saves at either end (``jacobianFlops(batch:d:wantX:wantT:mode:)``).
    public func resolve(_ mode: JacobianMode, batch: Int, d: Int, wantX: Bool, wantT: Bool) -> JacobianMode {
        guard mode == .auto else { return mode }
        let forwardSeeds = (wantX ? d : 0) + (wantT ? 1 : 0)
        return outputWidth(d: d) <= forwardSeeds ? .reverse : .forward
    }

    /// Per-sample Jacobian, as `vmap(jacrev(f_single))`: one batched sweep, never a loop over rows.
    public func jacobian(_ inputs: Inputs<S>, wrt: Set<GradTarget> = [.x], mode: JacobianMode = .auto) throws(GradError) -> JacobianResult<S> {
        try validate(inputs)
        let used = resolve(mode, batch: inputs.batch, d: inputs.width, wantX: wrt.contains(.x), wantT: wrt.contains(.t))
        if used == .reverse, Parallel.threads > 1, inputs.batch % Parallel.threads != 0, inputs.batch < 4 * Parallel.threads {
            return try reverseJacobianSplittingOutputs(inputs, wrt: wrt)
        }
        if let chunks = Parallel.chunks(inputs.batch) {
            // `auto` is resolved for the whole batch so every chunk runs the same sweep.
            let parts = try Parallel.map(chunks) { (r) throws(GradError) in try jacobianSerial(inputs.rows(r), wrt: wrt, mode: used) }
            return JacobianResult(
                outputs: .concatenate(parts.map(\.outputs)), x: parts[0].x == nil ? nil : .concatenate(parts.map { $0.x! }),
                t: parts[0].t == nil ? nil : .concatenate(parts.map { $0.t! }), mode: used)
        }
        return try jacobianSerial(inputs, wrt: wrt, mode: mode)
    }

    /// A small batch that row chunks would balance badly (B = 3 on 2 cores): split the D' output
    /// rows instead, each chunk one reverse sweep for every sample, written into its rows of J.
    func reverseJacobianSplittingOutputs(_ inputs: Inputs<S>, wrt: Set<GradTarget>) throws(GradError) -> JacobianResult<S> {
        let tr = try trace(inputs, derivatives: true)
        let b = tr.batch
        let d = tr.d
        let dOut = tr.outputWidth
        guard let chunks = Parallel.chunks(dOut) else { return try jacobianSerial(inputs, wrt: wrt, mode: .reverse) }
        var jx = [S](repeating: 0, count: wrt.contains(.x) ? b * dOut * d : 0)
        var jt = [S](repeating: 0, count: wrt.contains(.t) ? b * dOut : 0)
        var failure: GradError? = nil
        jx.withUnsafeMutableBufferPointer { xp in
            jt.withUnsafeMutableBufferPointer { tp in
                // Each chunk writes only its own rows of J. (An empty buffer's base address may be the
                // shared empty-array storage: never write through it.)
                let out = (xp.isEmpty ? 0 : Int(bitPattern: xp.baseAddress), tp.isEmpty ? 0 : Int(bitPattern: tp.baseAddress))
                do throws(GradError) {
                    try Parallel.forEach(chunks) { (k) throws(GradError) in
                        let g = try reverseJacobian(tr, outputs: k)
                        let (gx, gt) = (g.x.scalars, g.t?.scalars)  // a chunk's: arrays already, not copied
                        for s in 0..<b {
                            if let base = UnsafeMutablePointer<S>(bitPattern: out.0) {
                                gx.withUnsafeBufferPointer { src in
                                    (base + (s * dOut + k.lowerBound) * d).update(from: src.baseAddress! + s * k.count * d, count: k.count * d)
                                }
                            }
                            if let gt, let base = UnsafeMutablePointer<S>(bitPattern: out.1) {
                                for i in 0..<k.count { base[s * dOut + k.lowerBound + i] = gt[s * k.count + i] }
                            }
                        }
                    }
                } catch {
                    failure = error
                }
            }
        }
        if let failure { throw failure }
        return JacobianResult(
            outputs: tr.output, x: wrt.contains(.x) ? Tensor(shape: [b, dOut, d], scalars: jx) : nil,
            t: wrt.contains(.t) ? Tensor(shape: [b, dOut], scalars: jt) : nil, mode: .reverse)
    }

    func jacobianSerial(_ inputs: Inputs<S>, wrt: Set<GradTarget>, mode: JacobianMode) throws(GradError) -> JacobianResult<S> {
        if wrt.contains(.params) { throw .invalid(.wrt, "a Jacobian is taken with respect to x and/or t, not params") }
        if wrt.isEmpty { throw .invalid(.wrt, "must name x and/or t") }
        if wrt.contains(.t), !hasT { throw .invalid(.wrt, "t is not an input of this model (its inputs are [\"x\"])") }
        let wantX = wrt.contains(.x)
        let wantT = wrt.contains(.t)
        let b = inputs.batch
        let d = inputs.width
        let used = resolve(mode, batch: b, d: d, wantX: wantX, wantT: wantT)
        let tr = try trace(inputs, derivatives: true)
        let dOut = tr.outputWidth
        var result = JacobianResult(outputs: tr.output, x: nil, t: nil, mode: used)
        if used == .reverse {
            // The sweep's x̄ and t̄ are the answer (a ``ResultArena``'s when one is installed).
            let g = try reverseJacobian(tr)
            if wantX { result.x = g.x.reshaped([b, dOut, d]) }
            if wantT { result.t = g.t!.reshaped([b, dOut]) }
            return result
        }
        let (jx, jt) = try forwardJacobian(tr, wantX: wantX, wantT: wantT)
        if wantX { result.x = Tensor(shape: [b, dOut, d], scalars: jx!) }
        if wantT { result.t = Tensor(shape: [b, dOut], scalars: jt!) }
        return result
    }

    /// Reverse mode: K = D' identity cotangents in `[B, D', …]` order, so the input cotangent is
    /// already the `[B, D', D]` Jacobian. Through a last linear layer the identity seed is just W.
    /// Rows `outputs` (all by default) of every sample's Jacobian, flat: x̄ `[B·K·D]` and t̄
    /// `[B·K]` (K = outputs.count) when the model takes t.
    func reverseJacobian(_ tr: ForwardTrace<S>, outputs selected: Range<Int>? = nil) throws(GradError) -> InputCotangent<S> {
        let outputs = selected ?? 0..<tr.outputWidth
        let b = tr.batch
        let dOut = outputs.count
        let fullOut = tr.outputWidth
        let rows = b * dOut
        var seed: [S]
        var top = layers.count
        if case .linear(let last) = layers[top - 1] {
            // e_k · W = W[k, :]: the seed after the last layer is W repeated per sample.
            seed = [S]()
            seed.reserveCapacity(rows * last.inFeatures)
            last.weight.withUnsafeBufferPointer { w in
                let block = w[(outputs.lowerBound * last.inFeatures)..<(outputs.upperBound * last.inFeatures)]
                for _ in 0..<b { seed.append(contentsOf: block) }
            }
            top -= 1
            if top == 0 {
                return InputCotangent(seed.withUnsafeBufferPointer { Concat.vjp($0.baseAddress!, rows: rows, width: tr.d, hasT: hasT) })
            }
        } else {
            seed = [S](repeating: 0, count: rows * fullOut)
            for r in 0..<rows { seed[r * fullOut + outputs.lowerBound + r % dOut] = 1 }
        }
        var none: ParameterGradients<S>? = nil
        return try reverseSweep(
            seed: Tensor(shape: [seed.count], scalars: seed), rows: rows, order: .bMajor, trace: tr, top: top, wantInput: true, params: &none)!
    }

    /// Forward mode: K = D (+1) identity tangents in `[B, K, …]` order. Through a first linear layer
    /// the identity seed is just columns of W; a last linear layer writes each sample's `[D', D]`
    /// block with one GEMM, so no transpose copy is needed.
    func forwardJacobian(_ tr: ForwardTrace<S>, wantX: Bool, wantT: Bool) throws(GradError) -> (x: [S]?, t: [S]?) {
        let b = tr.batch
        let d = tr.d
        let d0 = tr.widths[0]
        let columns = (wantX ? Array(0..<d) : []) + (wantT ? [d] : [])
        let k = columns.count
        let rows = b * k
        var from = 0
        var u: [S]
        if case .linear(let first) = layers[0] {
            // W e_j = W[:, j]: gather the needed columns of W once, repeat them per sample.
            let out = first.outFeatures
            var block = [S](repeating: 0, count: k * out)
            first.weight.withUnsafeBufferPointer { w in
                for (kk, j) in columns.enumerated() {
                    for o in 0..<out { block[kk * out + o] = w[o * d0 + j] }
                }
            }
            u = []
            u.reserveCapacity(rows * out)
            for _ in 0..<b { u.append(contentsOf: block) }
            from = 1
        } else {
            u = [S](repeating: 0, count: rows * d0)
            for bb in 0..<b {
                for (kk, j) in columns.enumerated() { u[(bb * k + kk) * d0 + j] = 1 }
            }
        }
        var to = layers.count
        var lastLinear: Linear<S>? = nil
        if to - 1 >= from, case .linear(let last) = layers[to - 1] {
            lastLinear = last
            to -= 1
        }
        u = try forwardSweep(tangents: u, rows: rows, order: .bMajor, trace: tr, from: from, to: to)
        let dOut = tr.outputWidth
        var jx: [S]? = wantX ? [S](repeating: 0, count: b * dOut * d) : nil
        var jt: [S]? = wantT ? [S](repeating: 0, count: b * dOut) : nil
        u.withUnsafeBufferPointer { up in
            let width = lastLinear?.inFeatures ?? dOut
            for bb in 0..<b {
                let ub = up.baseAddress! + bb * k * width
                if let last = lastLinear {
                    last.weight.withUnsafeBufferPointer { w in
                        let wv = MatrixView(w.baseAddress!, rows: dOut, cols: width)
                        if wantX {
                            jx!.withUnsafeMutableBufferPointer { j in
                                BLAS.gemm(
                                    wv, MatrixView(ub, rows: d, cols: width), transposeB: true,
                                    into: MutableMatrixView(j.baseAddress! + bb * dOut * d, rows: dOut, cols: d))
                            }
                        }
                        if wantT {
                            jt!.withUnsafeMutableBufferPointer { j in
                                BLAS.gemv(wv, x: ub + (k - 1) * width, into: j.baseAddress! + bb * dOut)
                            }
                        }
                    }
                } else {
                    // Tangent rows are Jacobian columns: transpose each sample's [K, D'] block.
                    for i in 0..<dOut {
                        if wantX { for j in 0..<d { jx![(bb * dOut + i) * d + j] = ub[j * width + i] } }
                        if wantT { jt![bb * dOut + i] = ub[(k - 1) * width + i] }
                    }
                }
            }
        }
        return (jx, jt)
    }
}
