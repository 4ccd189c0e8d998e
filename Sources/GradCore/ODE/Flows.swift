import RealModule

/// How a log-density's divergence is computed along a solve.
public enum LogDensityDivergence: Sendable, Equatable {
    /// The exact trace of ∂v/∂x, from the same trace as the velocity.
    case exact
    /// Hutchinson's estimate with `probes` probe vectors drawn once per solve from `seed` and held
    /// fixed through it (as FFJORD and flow_matching do).
    case hutchinson(probes: Int, seed: UInt64, noise: ProbeNoise)
}

/// A sample: the state at the last grid time, and at every grid time when asked.
public struct FlowSample<S: BLASScalar>: Sendable {
    /// `[B, D]` at the last time of the grid.
    public var x: Tensor<S>
    /// `[T, B, D]`, the states at every grid time, when asked.
    public var trajectory: Tensor<S>?
    /// What the solve did.
    public var stats: ODEStats
}

/// A log-likelihood: `logprob = log p₀(x0) + log_det`, flow_matching's convention.
public struct FlowLogProb<S: BLASScalar>: Sendable {
    /// `[B]`, the log-density of each sample under the flow with a standard normal base.
    public var logprob: Tensor<S>
    /// `[B, D]`, the state at the last grid time.
    public var x0: Tensor<S>
    /// `[B]`, `∫ div v dt` along the grid.
    public var logDet: Tensor<S>
    /// `[T, B, D]`, the states at every grid time, when asked.
    public var trajectory: Tensor<S>?
    /// What the solve did.
    public var stats: ODEStats
}

extension Model {
    /// Integrates `dx/dt = v(x, t)` from `timeGrid[0]` (where x is `x`) along the grid: the
    /// sampling of a flow-matching model (flow_matching's `ODESolver.sample`). For a model with a
    /// t input, t is the integration time, the same for the whole batch.
    public func integrate(
        _ x: Tensor<S>, timeGrid: [Double], options: ODEOptions = ODEOptions(), returnIntermediates: Bool = false
    ) throws(GradError) -> FlowSample<S> {
        let (b, d) = try flowShape(x)
        var solver = ODESolver<S>(options: options, parts: [b * d]) { (t, y) throws(GradError) in
            try forward(flowInputs(y, b, d, t)).scalars
        }
        let states = try solver.solve(x.scalars, grid: timeGrid)
        return FlowSample(
            x: Tensor(shape: [b, d], scalars: states[states.count - 1]),
            trajectory: returnIntermediates ? Tensor(shape: [states.count, b, d], scalars: Array(states.joined())) : nil,
            stats: solver.stats)
    }

    /// The log-likelihood of `x` (data at `timeGrid[0]`, by default t = 1) under the flow: solves
    /// x and `log_det` (`d log_det/dt = div v`) together back along the grid, then adds the
    /// standard normal log-density of the end state (flow_matching's
    /// `ODESolver.compute_likelihood`). The velocity and its divergence come from one trace per
    /// evaluation.
    public func logprob(
        _ x: Tensor<S>, timeGrid: [Double] = [1, 0], options: ODEOptions = ODEOptions(), divergence: LogDensityDivergence = .exact,
        returnIntermediates: Bool = false
    ) throws(GradError) -> FlowLogProb<S> {
        let (b, d) = try flowShape(x)
        var eps: [S] = []
        var k = 0
        if case .hutchinson(let probes, let seed, let noise) = divergence {
            if probes < 1 { throw .invalid(.probes, "must be at least 1, got \(probes)") }
            k = probes
            eps = Self.probes(noise, count: probes * b * d, seed: seed)
        }
        let n = b * d
        // The cyclic trace's fixed product, once for the whole solve (not once per evaluation).
        let product = k == 0 ? cyclicProduct(d: d, batch: Swift.max(1, b / Parallel.threads)) : nil
        var solver = ODESolver<S>(options: options, parts: [n, b]) { (t, y) throws(GradError) in
            let (v, div) = try velocityAndDivergence(flowInputs(Array(y[0..<n]), b, d, t), eps: eps, probes: k, product: product)
            return v + div
        }
        let states = try solver.solve(x.scalars + [S](repeating: 0, count: b), grid: timeGrid)
        let last = states[states.count - 1]
        let x0 = Array(last[0..<n])
        let logDet = Array(last[n...])
        let halfLog2Pi = S(0.5 * Double.log(2 * Double.pi))
        let logprob = (0..<b).map { i in
            var sq: S = 0
            for j in 0..<d { sq += x0[i * d + j] * x0[i * d + j] }
            return -sq / 2 - S(Double(d)) * halfLog2Pi + logDet[i]
        }
        return FlowLogProb(
            logprob: Tensor(shape: [b], scalars: logprob), x0: Tensor(shape: [b, d], scalars: x0), logDet: Tensor(shape: [b], scalars: logDet),
            trajectory: returnIntermediates ? Tensor(shape: [states.count, b, d], scalars: states.flatMap { $0[0..<n] }) : nil,
            stats: solver.stats)
    }

    /// B and D of a flow's state, checked: a velocity field maps x to its own space (D' = D).
    func flowShape(_ x: Tensor<S>) throws(GradError) -> (Int, Int) {
        guard x.rank == 2, x.shape[0] >= 1, x.shape[1] >= 1 else {
            throw .invalid(.input(.x), "expected a non-empty [B, D] array, got shape \(Shape.describe(x.shape))")
        }
        let d = x.shape[1]
        try checkBatchShape(batch: x.shape[0], d: d)
        if outputWidth(d: d) != d {
            throw .invalid(.model(nil), "a velocity field needs as many outputs as x features (D' = D), got D' = \(outputWidth(d: d)), D = \(d)")
        }
        if let i = FiniteCheck.firstNonFinite(x) { throw .invalid(.input(.x), "the value at flat index \(i) is not finite") }
        return (x.shape[0], d)
    }

    /// The model's inputs at state `y` and time `t` (t only for models that take it).
    func flowInputs(_ y: [S], _ b: Int, _ d: Int, _ t: Double) -> Inputs<S> {
        Inputs(x: Tensor(shape: [b, d], scalars: y), t: hasT ? Tensor(shape: [b], scalars: [S](repeating: S(t), count: b)) : nil)
    }

    /// `v(x, t)` and its divergence from one forward trace: exact, or Hutchinson's with the
    /// `[K, B, D]` probes `eps` (K = `probes`, none for exact). Row chunks run at once.
    func velocityAndDivergence(_ inputs: Inputs<S>, eps: [S], probes k: Int, product: [S]? = nil) throws(GradError) -> ([S], [S]) {
        let b = inputs.batch
        let d = inputs.width
        if let chunks = Parallel.chunks(b) {
            let parts = try Parallel.map(chunks) { (r) throws(GradError) in
                // This chunk's probes: rows r of every probe's [B, D] block.
                var sub = [S]()
                sub.reserveCapacity(k * r.count * d)
                for kk in 0..<k { sub.append(contentsOf: eps[((kk * b + r.lowerBound) * d)..<((kk * b + r.upperBound) * d)]) }
                return try velocityAndDivergenceSerial(inputs.rows(r), eps: sub, probes: k, product: product)
            }
            return (parts.flatMap(\.0), parts.flatMap(\.1))
        }
        return try velocityAndDivergenceSerial(inputs, eps: eps, probes: k, product: product)
    }

    private func velocityAndDivergenceSerial(_ inputs: Inputs<S>, eps: [S], probes k: Int, product: [S]?) throws(GradError) -> ([S], [S]) {
        let tr = try trace(inputs, derivatives: true)
        let div = k == 0 ? try exactTrace(tr, product: product) : try hutchinson(tr, eps: eps, probes: k)
        return (tr.output.scalars, div)
    }
}
