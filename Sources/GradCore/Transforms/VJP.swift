/// What a gradient is taken with respect to (`wrt`).
public enum GradTarget: String, Sendable, CaseIterable, Hashable {
    case x
    case t
    case params
}

/// The answer of a VJP: outputs and the requested gradients.
public struct VJPResult<S: BLASScalar>: Sendable {
    /// `[B, D']`, unless outputs were not asked for.
    public var outputs: Tensor<S>?
    /// `[B, D]` (or `[K, B, D]` when K-batched), when x was asked for.
    public var x: Tensor<S>?
    /// `[B]` (or `[K, B]`), when t was asked for.
    public var t: Tensor<S>?
    /// Parameter gradients in layer order, summed over the batch (`[K, …]` when K-batched).
    public var params: [(name: String, grad: Tensor<S>)]
}

extension Model {
    /// Vector-Jacobian product: `torch.autograd.grad(y, [x, t, *params], grad_outputs=v)`.
    ///
    /// - Parameters:
    ///   - gradOutputs: `[B, D']`, or `[K, B, D']` with `isGradsBatched`; all K go through one sweep.
    ///   - wrt: the gradients to return.
    ///   - returnOutputs: whether to return `f(x, t)` too (skipping it saves the last layer's forward).
    public func vjp(
        _ inputs: Inputs<S>, gradOutputs v: Tensor<S>, isGradsBatched: Bool = false, wrt: Set<GradTarget> = [.x],
        returnOutputs: Bool = true
    ) throws(GradError) -> VJPResult<S> {
        try validate(inputs)
        if !isGradsBatched, v.shape.first == inputs.batch, let chunks = Parallel.chunks(inputs.batch) {
            let parts = try Parallel.map(chunks) { (r) throws(GradError) in
                try vjpSerial(inputs.rows(r), gradOutputs: v.rows(r), isGradsBatched: false, wrt: wrt, returnOutputs: returnOutputs)
            }
            var params = parts[0].params
            for part in parts.dropFirst() {
                for (i, (_, g)) in part.params.enumerated() {
                    g.withUnsafeBufferPointer { src in
                        params[i].grad.withUnsafeMutableBufferPointer { dst in for j in dst.indices { dst[j] += src[j] } }
                    }
                }
            }
            return VJPResult(
                outputs: parts[0].outputs == nil ? nil : .concatenate(parts.map { $0.outputs! }),
                x: parts[0].x == nil ? nil : .concatenate(parts.map { $0.x! }),
                t: parts[0].t == nil ? nil : .concatenate(parts.map { $0.t! }), params: params)
        }
        return try vjpSerial(inputs, gradOutputs: v, isGradsBatched: isGradsBatched, wrt: wrt, returnOutputs: returnOutputs)
    }

    func vjpSerial(
        _ inputs: Inputs<S>, gradOutputs v: Tensor<S>, isGradsBatched: Bool, wrt: Set<GradTarget>, returnOutputs: Bool
    ) throws(GradError) -> VJPResult<S> {
        if wrt.contains(.t), !hasT {
            throw .invalid(.wrt, "t is not an input of this model (its inputs are [\"x\"])")
        }
        let b = inputs.batch
        let dOut = outputWidth(d: inputs.width)
        let expected = isGradsBatched ? [v.shape.first ?? 0, b, dOut] : [b, dOut]
        if v.shape != expected || (isGradsBatched && expected[0] < 1) {
            let want = isGradsBatched ? "[K, \(b), \(dOut)] with K ≥ 1" : Shape.describe(expected)
            throw .invalid(.cotangent, "expected shape \(want) to match outputs [\(b), \(dOut)], got \(Shape.describe(v.shape))")
        }
        if let issue = nonFinite(v, at: .cotangent) { throw .invalid([issue]) }
        let k = isGradsBatched ? v.shape[0] : 1
        let tr = try trace(inputs, derivatives: true, outputs: returnOutputs, concatenatedInput: wrt.contains(.params))
        var params: ParameterGradients<S>? = wrt.contains(.params) ? ParameterGradients(k: k) : nil
        let wantInput = wrt.contains(.x) || wrt.contains(.t)
        let g = try reverseSweep(seed: v, rows: k * b, order: .kMajor, trace: tr, top: layers.count, wantInput: wantInput, params: &params)
        let lead = isGradsBatched ? [k] : []
        var result = VJPResult<S>(outputs: returnOutputs ? tr.output : nil, x: nil, t: nil, params: [])
        if wrt.contains(.x), let g { result.x = g.x.reshaped(lead + [b, inputs.width]) }
        if wrt.contains(.t), let gt = g?.t { result.t = gt.reshaped(lead + [b]) }
        if let params {
            result.params = params.order.map { name in
                let (shape, scalars) = params.values[name]!
                return (name, Tensor(shape: lead + shape, scalars: scalars))
            }
        }
        return result
    }
}
