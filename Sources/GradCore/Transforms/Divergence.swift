import RealModule

/// How a divergence is computed.
public enum DivergenceMethod: Sendable, Equatable {
    /// The exact trace of ∂y/∂x per sample.
    case exact
    /// Hutchinson's estimator `mean_p εₚᵀ J εₚ` with Rademacher probes from `seed`.
    case hutchinson(probes: Int, seed: UInt64)
}

extension Model {
    /// `tr(∂y/∂x)` per sample, `[B]` (t excluded); needs D' = D.
    public func divergence(_ inputs: Inputs<S>, method: DivergenceMethod = .exact) throws(GradError) -> Tensor<S> {
        try validate(inputs)
        let d = inputs.width
        let dOut = outputWidth(d: d)
        if dOut != d {
            throw .invalid(.model(nil), "divergence needs as many outputs as x features (D' = D), got D' = \(dOut), D = \(d)")
        }
        if method == .exact, let chunks = Parallel.chunks(inputs.batch) {
            return .concatenate(try Parallel.map(chunks) { (r) throws(GradError) in try divergenceSerial(inputs.rows(r), method: .exact) })
        }
        return try divergenceSerial(inputs, method: method)
    }

    func divergenceSerial(_ inputs: Inputs<S>, method: DivergenceMethod) throws(GradError) -> Tensor<S> {
        let tr = try trace(inputs, derivatives: true)
        switch method {
        case .exact:
            return Tensor(shape: [inputs.batch], scalars: try exactTrace(tr))
        case .hutchinson(let probes, let seed):
            if probes < 1 { throw .invalid(.probes, "must be at least 1, got \(probes)") }
            let eps: [S] = Self.probes(.rademacher, count: probes * inputs.batch * inputs.width, seed: seed)
            return Tensor(shape: [inputs.batch], scalars: try hutchinson(tr, eps: eps, probes: probes))
        }
    }

    /// The exact trace of each sample's Jacobian from a forward trace taken with derivatives.
    ///
    /// The cyclic trace holds B·h_L·h₁ numbers, the Jacobian B·D'·w: the plan takes the smaller,
    /// so wide hidden layers around a narrow x (D = 1, h = 65536) never form B·h·h. `product`:
    /// ``cyclicProduct(d:)`` when the caller already has it (an ODE solve, for all its evaluations).
    func exactTrace(_ tr: ForwardTrace<S>, product: [S]? = nil) throws(GradError) -> [S] {
        let cyclic = plan(.divergence(.exact), batch: tr.batch, d: tr.d).divergenceByCyclicTrace
        if cyclic, let traces = try cyclicTrace(tr, product: product) { return traces }
        return try jacobianTrace(tr)
    }

    /// `Pᵀ = W_Lᵀ W_1xᵀ` (`[h_L, h₁]`) for x of width `d`, the fixed part of the cyclic trace; nil
    /// when the model does not start and end with `linear`, or when the plan would form the
    /// Jacobian instead (then there is nothing to keep).
    func cyclicProduct(d: Int, batch: Int) -> [S]? {
        guard plan(.divergence(.exact), batch: batch, d: d).divergenceByCyclicTrace, layers.count >= 2,
            case .linear(let first) = layers[0], case .linear(let last) = layers[layers.count - 1]
        else { return nil }
        let h1 = first.outFeatures
        let hL = last.inFeatures
        // Pᵀ = W_Lᵀ W_1xᵀ: [hL, h1]; row i is the tangent P e_i.
        var pt = [S](repeating: 0, count: hL * h1)
        last.weight.withUnsafeBufferPointer { wl in
            first.weight.withUnsafeBufferPointer { w1 in
                pt.withUnsafeMutableBufferPointer { p in
                    BLAS.gemm(
                        MatrixView(wl.baseAddress!, rows: d, cols: hL), transposeA: true,
                        MatrixView(w1.baseAddress!, rows: h1, cols: d, stride: first.inFeatures), transposeB: true,
                        into: MutableMatrixView(p.baseAddress!, rows: hL, cols: h1))
                }
            }
        }
        return pt
    }

    /// Exact trace for `linear → … → linear` without forming the D×D Jacobian.
    ///
    /// `J_b = W_L M_b W_1x` with `M_b` the Jacobian of the middle layers (hidden widths only).
    /// By the cyclic property `tr(J_b) = tr(M_b P)` with `P = W_1x W_L` (`[h₁, h_L]`), so one forward
    /// sweep of the h_L columns of P through the middle layers gives every trace. Nil when the model
    /// does not start and end with `linear`.
    func cyclicTrace(_ tr: ForwardTrace<S>, product: [S]? = nil) throws(GradError) -> [S]? {
        guard layers.count >= 2, case .linear = layers[0], case .linear(let last) = layers[layers.count - 1] else { return nil }
        guard let pt = product ?? cyclicProduct(d: tr.d, batch: tr.batch) else { return nil }
        let b = tr.batch
        let hL = last.inFeatures
        var seed = [S]()
        seed.reserveCapacity(b * pt.count)
        for _ in 0..<b { seed.append(contentsOf: pt) }
        let u = try forwardSweep(tangents: seed, rows: b * hL, order: .bMajor, trace: tr, from: 1, to: layers.count - 1)
        return (0..<b).map { bb in
            var s: S = 0
            for i in 0..<hL { s += u[(bb * hL + i) * hL + i] }
            return s
        }
    }

    /// Exact trace from the full Jacobian (any model with D' = D).
    func jacobianTrace(_ tr: ForwardTrace<S>) throws(GradError) -> [S] {
        let b = tr.batch
        let d = tr.d
        let mode = resolve(.auto, batch: b, d: d, wantX: true, wantT: false)
        let j = try mode == .reverse ? reverseJacobian(tr).x.scalars : forwardJacobian(tr, wantX: true, wantT: false).x!
        return (0..<b).map { bb in
            var s: S = 0
            for i in 0..<d { s += j[(bb * d + i) * d + i] }
            return s
        }
    }

    /// Probe vectors for Hutchinson's estimator, `count` numbers drawn from `seed`: ±1 with equal
    /// odds, or standard normal (Box–Muller). The same seed gives the same probes everywhere.
    static func probes(_ noise: ProbeNoise, count: Int, seed: UInt64) -> [S] {
        var rng = SplitMix64(seed: seed)
        var eps = [S](repeating: 0, count: count)
        var i = 0
        switch noise {
        case .rademacher:
            while i < count {
                var bits = rng.next()
                for _ in 0..<64 where i < count {
                    eps[i] = (bits & 1) == 0 ? 1 : -1
                    bits >>= 1
                    i += 1
                }
            }
        case .gaussian:
            while i < count {
                let u1 = (Double(rng.next() >> 11) + 1) / 9_007_199_254_740_992  // (0, 1]
                let u2 = Double(rng.next() >> 11) / 9_007_199_254_740_992
                let r = (-2 * Double.log(u1)).squareRoot()
                eps[i] = S(r * Double.cos(2 * Double.pi * u2))
                if i + 1 < count { eps[i + 1] = S(r * Double.sin(2 * Double.pi * u2)) }
                i += 2
            }
        }
        return eps
    }

    /// Hutchinson: all probes in one forward sweep (K = probes), `eps` the `[K, B, D]` tangents.
    func hutchinson(_ tr: ForwardTrace<S>, eps: [S], probes k: Int) throws(GradError) -> [S] {
        let b = tr.batch
        let d = tr.d
        let d0 = tr.widths[0]
        var u = [S](repeating: 0, count: k * b * d0)
        for r in 0..<(k * b) {
            for j in 0..<d { u[r * d0 + j] = eps[r * d + j] }
        }
        let y = try forwardSweep(tangents: u, rows: k * b, order: .kMajor, trace: tr, from: 0, to: layers.count)
        var div = [S](repeating: 0, count: b)
        for kk in 0..<k {
            for bb in 0..<b {
                let r = kk * b + bb
                var s: S = 0
                for j in 0..<d { s += eps[r * d + j] * y[r * d + j] }
                div[bb] += s
            }
        }
        return div.map { $0 / S(Double(k)) }
    }
}

/// The distribution of Hutchinson probe vectors.
public enum ProbeNoise: String, CaseIterable, Sendable {
    /// ±1 with equal odds (the lowest variance for a fixed Jacobian).
    case rademacher
    /// Standard normal.
    case gaussian
}

/// SplitMix64: a small, fast, seedable generator; the same seed gives the same probes everywhere.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
