/// What one computation will cost, from the model and the request's shapes alone, before any
/// tensor is allocated: the numbers it answers, the bytes it holds at its peak, and its FLOPs.
///
/// Every figure is an upper bound in overflow-checked arithmetic (``Count``). The byte figure
/// covers the core's own allocations — the forward trace (every layer's input and activation
/// derivative, `B·Σw`), the sweep buffers (K-batched cotangents or tangents, Jacobian seeds
/// `B·D'·w`, divergence seeds `B·h·h`), parameter gradients and the result — not the request body
/// or the encoded answer, which the server adds.
public struct ResourcePlan: Sendable, Equatable {
    /// Numbers in the result tensors.
    public var outputElements: Count
    /// Peak bytes of the core's working set.
    public var peakBytes: Count
    /// Floating-point operations of the GEMMs (2 per multiply-add).
    public var flops: Count
    /// The activations' work in FLOP-equivalents: each evaluation (a value and its derivative,
    /// then one product with it per tangent, cotangent or seed) at its rule's cost, from 10 for
    /// ReLU to 3 000 for a libm call (``ElementwiseRule/evaluationCost(_:)``). What ``flops``
    /// does not see, and what dominates a model of activations with few or narrow linear layers.
    public var elementwise: Count = .zero
    /// Weights read from memory over the passes of the computation (a batch of one reads every
    /// weight for two FLOPs each: memory-bound, not FLOP-bound).
    public var weightReads: Count = .zero
    /// Layer steps over the passes (a BLAS call, an allocation and a checkpoint each, whatever
    /// their size: what a deep, narrow model costs).
    public var layerSteps: Count = .zero
    /// Rows through a layer over the passes (B, K·B or B·seeds rows per pass): what a narrow
    /// layer costs beyond its FLOPs (~2.5 ns a row in OpenBLAS at width 1).
    public var rowSteps: Count = .zero
    /// BLAS calls made per sample or per cotangent (a forward-mode Jacobian's, a K-batched
    /// VJP's parameter gradients), ~0.2 µs each whatever their size.
    public var smallCalls: Count = .zero

    /// The computation's work in FLOP-equivalents, one about 0.01 ns on a core here: its GEMM
    /// FLOPs, the activations' ``elementwise`` work, 50 per weight read (~0.5 ns from memory),
    /// 200 000 per layer step (~2 µs), 250 per row step and 20 000 per small call. An estimate of
    /// its time, for deciding where to run it (``flops`` alone is what `--max-request-gflop` counts).
    public var work: Count { flops + elementwise + weightReads * 50 + layerSteps * 200_000 + rowSteps * 250 + smallCalls * 20_000 }
    /// For exact divergences: whether the cyclic trace (`B·h_L·h_1`) or a full Jacobian is cheaper.
    public var divergenceByCyclicTrace: Bool = false
    /// The widest layer boundary (for messages).
    public var widest: Int = 0

    /// Creates a plan.
    public init(outputElements: Count, peakBytes: Count, flops: Count) {
        self.outputElements = outputElements
        self.peakBytes = peakBytes
        self.flops = flops
    }
}

/// An operation as the planner sees it.
public enum PlannedOperation: Sendable, Equatable {
    /// `f(x, t)`.
    case forward
    /// K cotangents (K = 1 unless `is_grads_batched`).
    case vjp(k: Int, wrt: Set<GradTarget>, returnOutputs: Bool)
    /// K tangents (K = 1 unless batched).
    case jvp(k: Int, returnOutputs: Bool)
    /// Per-sample Jacobians `[B, D', D]` (and `[B, D']` for t); `mode` as asked (auto resolved here).
    case jacobian(wrt: Set<GradTarget>, mode: JacobianMode, returnOutputs: Bool = true)
    /// `[B]` traces (and the outputs `[B, D']` when asked).
    case divergence(DivergenceMethod, returnOutputs: Bool = false)
}

extension Model {
    /// Checks the batch shape `[B, D]` of x against the model before anything is sized from it.
    /// Paths are the `/v1` request's; front ends rename them.
    public func checkBatchShape(batch b: Int, d: Int) throws(GradError) {
        if b < 1 || d < 1 {
            throw .invalid(.input(.x), "expected a non-empty [B, D] array, got shape \(Shape.describe([b, d]))")
        }
        if let w = inputWidth, d != w {
            throw .invalid(.input(.x), "expected [\(b), \(w)] (D = \(w) features), got \(Shape.describe([b, d]))")
        }
        // A model of activations only takes any D; its widths are D (+1), which must not overflow.
        if d > Int(Int32.max) { throw .invalid(.input(.x), "D = \(d) features is more than any tensor may hold") }
    }

    /// The plan of `op` on a batch `[B, D]`. Call ``checkBatchShape(batch:d:)`` first.
    public func plan(_ op: PlannedOperation, batch b: Int, d: Int) -> ResourcePlan {
        var p = planUnlabelled(op, batch: b, d: d)
        let w = widths(d: d)
        p.widest = w.max() ?? 0
        addWorkEstimate(&p, op, batch: b, d: d, widths: w)
        return p
    }

    /// Fills the plan's time estimate beyond its FLOPs (``ResourcePlan/work``); `w` is `widths(d:)`.
    func addWorkEstimate(_ p: inout ResourcePlan, _ op: PlannedOperation, batch b: Int, d: Int, widths w: [Int]) {
        let dOut = w[w.count - 1]
        var activationCost = Count.zero  // per row, one evaluation of every activation
        var weights = Count.zero
        var linears = 0
        for (l, layer) in layers.enumerated() {
            switch layer {
            case .activation(let act) where !act.isIdentity: activationCost += Count(w[l]) * act.evaluationCost(S.self)
            case .activation: break
            case .linear(let lin):
                weights += Count(lin.inFeatures) * lin.outFeatures + lin.outFeatures
                linears += 1
            }
        }
        // Sweeps over the activations after the forward (which counts twice with derivatives);
        // rows a pass carries; small per-sample or per-cotangent calls.
        let sweeps: Count
        let rows: Count
        var calls = Count.zero
        switch op {
        case .forward:
            (sweeps, rows) = (.zero, Count(b))
        case .vjp(let k, let wrt, _):
            let kk = Count(Swift.max(k, 1))
            (sweeps, rows) = (kk + 1, kk * b)
            if wrt.contains(.params), k > 1 { calls = kk * linears * 2 }
        case .jvp(let k, _):
            let kk = Count(Swift.max(k, 1))
            (sweeps, rows) = (kk + 1, kk * b)
        case .jacobian(let wrt, let mode, _):
            let seeds = Count(Swift.max(d + 1, dOut))
            (sweeps, rows) = (seeds + 1, seeds * b)
            if resolve(mode, batch: b, d: d, wantX: wrt.contains(.x), wantT: wrt.contains(.t)) == .forward { calls = Count(b) * linears * 2 }
        case .divergence(.hutchinson(let probes, _), _):
            (sweeps, rows) = (Count(probes) + 2, Count(probes) * b)
        case .divergence(.exact, _):
            let seeds = Count(Swift.max(d + 1, dOut))
            (sweeps, rows) = (seeds + 2, seeds * b)
            calls = Count(b) * linears * 2
        }
        // A forward is one pass; every derivative a forward, a sweep and (parameter gradients,
        // Jacobian blocks) a third, bounded here by three.
        let passes = op == .forward ? 1 : 3
        p.elementwise = Count(b) * activationCost * (sweeps + 1)
        p.weightReads = weights * passes
        p.layerSteps = Count(layers.count) * passes
        p.rowSteps = rows * layers.count * passes
        p.smallCalls = calls
    }

    private func planUnlabelled(_ op: PlannedOperation, batch b: Int, d: Int) -> ResourcePlan {
        let s = S.dtype.byteCount
        let w = widths(d: d)
        let dOut = w[w.count - 1]
        let maxW = w.max() ?? 1
        let rowsB = Count(b)
        // The forward trace: every layer boundary's values, and σ'(z) per (non-identity) activation.
        var boundary = Count(w[0])
        var derivative = Count.zero
        var linearMACs = Count.zero  // Σ in·out over linear layers
        for (l, layer) in layers.enumerated() {
            switch layer {
            case .linear(let lin):
                boundary += Count(w[l + 1])
                linearMACs += Count(lin.inFeatures) * lin.outFeatures
            case .activation(let act) where act.isIdentity: break
            case .activation: boundary += Count(w[l + 1]); derivative += Count(w[l])
            }
        }
        let traceNoDerivatives = rowsB * boundary
        let trace = rowsB * (boundary + derivative)
        let forwardFlops = rowsB * linearMACs * 2
        let outputs = rowsB * dOut

        func bytes(_ elements: Count) -> Count { elements * s }
        switch op {
        case .forward:
            return ResourcePlan(outputElements: outputs, peakBytes: bytes(traceNoDerivatives + outputs), flops: forwardFlops)
        case .vjp(let k, let wrt, let returnOutputs):
            let kk = Count(Swift.max(k, 1))
            let rows = kk * b
            var out = returnOutputs ? outputs : .zero
            if wrt.contains(.x) { out += rows * d }
            if wrt.contains(.t) { out += rows }
            if wrt.contains(.params) { out += kk * parameterCount }
            // Three cotangent buffers in flight (the seed, a copy made by the first in-place
            // activation rule while the caller still holds the seed, the next layer's), the
            // parameter gradients once per row chunk plus the sum, and the result once more where
            // row chunks are concatenated.
            let work = trace + rows * maxW * 3 + kk * parameterCount * Swift.max(2, Parallel.threads + 1) + out
            return ResourcePlan(outputElements: out, peakBytes: bytes(work + out), flops: forwardFlops + forwardFlops * kk * 2)
        case .jvp(let k, let returnOutputs):
            let kk = Count(Swift.max(k, 1))
            let rows = kk * b
            let out = (returnOutputs ? outputs : .zero) + rows * dOut
            return ResourcePlan(outputElements: out, peakBytes: bytes(trace + rows * maxW * 3 + out * 2), flops: forwardFlops * (kk + 1))
        case .jacobian(let wrt, let mode, let returnOutputs):
            let wantX = wrt.contains(.x)
            let wantT = wrt.contains(.t)
            let used = resolve(mode, batch: b, d: d, wantX: wantX, wantT: wantT)
            var out = returnOutputs ? outputs : .zero
            if wantX { out += outputs * d }
            if wantT { out += outputs }
            let seeds = used == .reverse ? Count(dOut) : Count((wantX ? d : 0) + (wantT ? 1 : 0))
            let rows = rowsB * seeds
            let work = trace + rows * maxW * 3 + (outputs * (d + 1)) * 2 + outputs
            return ResourcePlan(outputElements: out, peakBytes: bytes(work), flops: forwardFlops + jacobianFlopCount(batch: b, d: d, seeds: seeds, mode: used))
        case .divergence(let method, let returnOutputs):
            var p: ResourcePlan
            switch method {
            case .hutchinson(let probes, _):
                let rows = Count(probes) * b
                let work = trace + rows * d * 2 + rows * maxW * 3 + Count(probes) * b
                p = ResourcePlan(outputElements: rowsB, peakBytes: bytes(work), flops: forwardFlops * (Count(probes) + 1))
            case .exact:
                p = plan(.jacobian(wrt: [.x], mode: .auto), batch: b, d: d)
                if let cyclic = cyclicTracePlan(batch: b, d: d, trace: trace, forwardFlops: forwardFlops), cyclic.peakBytes <= p.peakBytes {
                    p = cyclic
                    p.divergenceByCyclicTrace = true
                }
            }
            // The outputs come from a second forward pass.
            p.outputElements = rowsB + (returnOutputs ? outputs : .zero)
            if returnOutputs {
                p.peakBytes += bytes(traceNoDerivatives + outputs)
                p.flops += forwardFlops
            }
            return p
        }
    }

    /// The cyclic trace's cost (nil when the model does not start and end with `linear`):
    /// `Pᵀ` `[h_L, h₁]` per sample through the middle layers.
    func cyclicTracePlan(batch b: Int, d: Int, trace: Count, forwardFlops: Count) -> ResourcePlan? {
        guard layers.count >= 2, case .linear(let first) = layers[0], case .linear(let last) = layers[layers.count - 1] else { return nil }
        let h1 = first.outFeatures
        let hL = last.inFeatures
        var maxHidden = Swift.max(h1, hL)
        var middleMACs = Count.zero
        for layer in layers.dropFirst().dropLast() {
            if case .linear(let lin) = layer {
                maxHidden = Swift.max(maxHidden, lin.outFeatures)
                middleMACs += Count(lin.inFeatures) * lin.outFeatures
            }
        }
        let rows = Count(b) * hL
        let work = trace + Count(hL) * h1 + rows * h1 + rows * maxHidden * 3
        let flops = forwardFlops + Count(hL) * h1 * d * 2 + rows * middleMACs * 2
        return ResourcePlan(outputElements: Count(b), peakBytes: work * S.dtype.byteCount, flops: flops)
    }

    /// GEMM FLOPs of a Jacobian sweep with `seeds` seeds per sample (the identity seed through the
    /// first or last linear layer costs none), in checked arithmetic.
    func jacobianFlopCount(batch b: Int, d: Int, seeds: Count, mode: JacobianMode) -> Count {
        var flops = Count.zero
        for (l, layer) in layers.enumerated() {
            guard case .linear(let lin) = layer else { continue }
            if mode == .forward, l == 0 { continue }
            if mode == .reverse, l == layers.count - 1 { continue }
            flops += Count(b) * seeds * lin.inFeatures * lin.outFeatures * 2
        }
        return flops
    }
}

extension AnyModel {
    /// See ``Model/checkBatchShape(batch:d:)``.
    public func checkBatchShape(batch b: Int, d: Int) throws(GradError) {
        switch self {
        case .float32(let m): try m.checkBatchShape(batch: b, d: d)
        case .float64(let m): try m.checkBatchShape(batch: b, d: d)
        }
    }

    /// See ``Model/plan(_:batch:d:)``.
    public func plan(_ op: PlannedOperation, batch b: Int, d: Int) -> ResourcePlan {
        switch self {
        case .float32(let m): m.plan(op, batch: b, d: d)
        case .float64(let m): m.plan(op, batch: b, d: d)
        }
    }
}
