/// Flows on a model whose precision is known at run time, and their plans.
extension AnyModel {
    /// A sample (``Model/integrate(_:timeGrid:options:returnIntermediates:)``).
    public struct Sample: Sendable {
        /// `[B, D]` at the last grid time.
        public var x: AnyTensor
        /// `[T, B, D]`, when asked.
        public var trajectory: AnyTensor?
        /// What the solve did.
        public var stats: ODEStats
    }

    /// A log-likelihood (``Model/logprob(_:timeGrid:options:divergence:returnIntermediates:)``).
    public struct LogProb: Sendable {
        /// `[B]`.
        public var logprob: AnyTensor
        /// `[B, D]` at the last grid time.
        public var x0: AnyTensor
        /// `[B]`.
        public var logDet: AnyTensor
        /// `[T, B, D]`, when asked.
        public var trajectory: AnyTensor?
        /// What the solve did.
        public var stats: ODEStats
    }

    /// See ``Model/integrate(_:timeGrid:options:returnIntermediates:)``; `x` is cast to the model's dtype.
    public func integrate(_ x: AnyTensor, timeGrid: [Double], options: ODEOptions, returnIntermediates: Bool) throws(GradError) -> Sample {
        func wrap<S>(_ r: FlowSample<S>) -> Sample { Sample(x: AnyTensor(r.x), trajectory: r.trajectory.map(AnyTensor.init), stats: r.stats) }
        switch self {
        case .float32(let m): return wrap(try m.integrate(x.cast(), timeGrid: timeGrid, options: options, returnIntermediates: returnIntermediates))
        case .float64(let m): return wrap(try m.integrate(x.cast(), timeGrid: timeGrid, options: options, returnIntermediates: returnIntermediates))
        }
    }

    /// See ``Model/logprob(_:timeGrid:options:divergence:returnIntermediates:)``; `x` is cast to the model's dtype.
    public func logprob(
        _ x: AnyTensor, timeGrid: [Double], options: ODEOptions, divergence: LogDensityDivergence, returnIntermediates: Bool
    ) throws(GradError) -> LogProb {
        func wrap<S>(_ r: FlowLogProb<S>) -> LogProb {
            LogProb(
                logprob: AnyTensor(r.logprob), x0: AnyTensor(r.x0), logDet: AnyTensor(r.logDet), trajectory: r.trajectory.map(AnyTensor.init),
                stats: r.stats)
        }
        switch self {
        case .float32(let m):
            return wrap(try m.logprob(x.cast(), timeGrid: timeGrid, options: options, divergence: divergence, returnIntermediates: returnIntermediates))
        case .float64(let m):
            return wrap(try m.logprob(x.cast(), timeGrid: timeGrid, options: options, divergence: divergence, returnIntermediates: returnIntermediates))
        }
    }

    /// See ``Model/plan(flow:batch:d:timeGrid:options:returnIntermediates:)``.
    public func plan(
        flow: LogDensityDivergence?, batch b: Int, d: Int, timeGrid: [Double], options: ODEOptions, returnIntermediates: Bool
    ) -> ResourcePlan {
        switch self {
        case .float32(let m): m.plan(flow: flow, batch: b, d: d, timeGrid: timeGrid, options: options, returnIntermediates: returnIntermediates)
        case .float64(let m): m.plan(flow: flow, batch: b, d: d, timeGrid: timeGrid, options: options, returnIntermediates: returnIntermediates)
        }
    }
}

extension Model {
    /// The plan of a solve: a sample (`flow` nil) or a log-likelihood with its divergence.
    ///
    /// Memory: one evaluation's working set (a forward, or a trace with its divergence), the
    /// solver's state vectors (the stages of the method plus the state, the next state and the
    /// error, `B·D + B` numbers each), the state at every grid time, and the trajectory's copy
    /// when asked. FLOPs: every evaluation of a
    /// fixed-step solve; for dopri5, whose step count depends on the flow, its first step (eight
    /// evaluations) — `max_steps` and the deadline bound the rest.
    public func plan(
        flow: LogDensityDivergence?, batch b: Int, d: Int, timeGrid: [Double], options: ODEOptions, returnIntermediates: Bool
    ) -> ResourcePlan {
        let s = S.dtype.byteCount
        let perEval: ResourcePlan
        var probes = Count.zero
        switch flow {
        case nil: perEval = plan(.forward, batch: b, d: d)
        case .exact?: perEval = plan(.divergence(.exact), batch: b, d: d)
        case .hutchinson(let k, _, _)?:
            perEval = plan(.divergence(.hutchinson(probes: k, seed: 0)), batch: b, d: d)
            probes = Count(k) * b * d
        }
        let state = Count(b) * d + (flow == nil ? 0 : b)
        let vectors = options.method.stages + 4
        let points = Count(timeGrid.count)
        let trajectory = returnIntermediates ? points * b * d : .zero
        let evaluations: Count
        if options.method.isAdaptive {
            evaluations = Count(8)
        } else {
            let steps = options.fixedStepCount(timeGrid) ?? options.maxSteps
            evaluations = Count(steps) * options.method.stages
        }
        var p = ResourcePlan(
            outputElements: state + (flow == nil ? 0 : b) + trajectory,
            peakBytes: perEval.peakBytes + (state * vectors + probes + points * state + trajectory) * s,
            flops: perEval.flops * evaluations)
        p.widest = perEval.widest
        return p
    }
}
