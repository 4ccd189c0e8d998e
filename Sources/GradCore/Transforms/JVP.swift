/// The answer of a JVP: outputs and `J u`.
public struct JVPResult<S: BLASScalar>: Sendable {
    /// `[B, D']`, unless outputs were not asked for.
    public var outputs: Tensor<S>?
    /// `[B, D']`, or `[K, B, D']` for K-batched tangents.
    public var jvp: Tensor<S>
}

extension Model {
    /// Jacobian-vector product in true forward mode (`torch.func.jvp`): `J_x u_x + J_t u_t`.
    ///
    /// - Parameters:
    ///   - tangentX: `[B, D]` or `[K, B, D]`; nil counts as zero.
    ///   - tangentT: `[B]` or `[K, B]`; nil counts as zero. When both are given their K must agree.
    ///   - returnOutputs: whether to return `f(x, t)` too (skipping it saves the last layer's forward).
    public func jvp(
        _ inputs: Inputs<S>, tangentX: Tensor<S>?, tangentT: Tensor<S>?, returnOutputs: Bool = true
    ) throws(GradError) -> JVPResult<S> {
        try validate(inputs)
        let unbatched = tangentX.map { $0.rank == 2 } ?? true && tangentT.map { $0.rank == 1 } ?? true
        if unbatched, tangentX?.shape.first ?? inputs.batch == inputs.batch, tangentT?.shape.first ?? inputs.batch == inputs.batch,
            let chunks = Parallel.chunks(inputs.batch)
        {
            let parts = try Parallel.map(chunks) { (r) throws(GradError) in
                try jvpSerial(inputs.rows(r), tangentX: tangentX?.rows(r), tangentT: tangentT?.rows(r), returnOutputs: returnOutputs)
            }
            return JVPResult(
                outputs: parts[0].outputs == nil ? nil : .concatenate(parts.map { $0.outputs! }), jvp: .concatenate(parts.map(\.jvp)))
        }
        return try jvpSerial(inputs, tangentX: tangentX, tangentT: tangentT, returnOutputs: returnOutputs)
    }

    func jvpSerial(
        _ inputs: Inputs<S>, tangentX: Tensor<S>?, tangentT: Tensor<S>?, returnOutputs: Bool
    ) throws(GradError) -> JVPResult<S> {
        let b = inputs.batch
        let d = inputs.width
        if tangentT != nil, !hasT {
            throw .invalid(.tangent(.t), "the model has no t input (its inputs are [\"x\"])")
        }
        var issues: [FieldIssue] = []
        var kx: Int? = nil
        var kt: Int? = nil
        if let u = tangentX {
            if u.shape == [b, d] {
                kx = 0
            } else if u.rank == 3, u.shape[1] == b, u.shape[2] == d, u.shape[0] >= 1 {
                kx = u.shape[0]
            } else {
                issues.append(FieldIssue(.tangent(.x), "expected [\(b), \(d)] or [K, \(b), \(d)] like the input x, got \(Shape.describe(u.shape))"))
            }
        }
        if let u = tangentT {
            if u.shape == [b] {
                kt = 0
            } else if u.rank == 2, u.shape[1] == b, u.shape[0] >= 1 {
                kt = u.shape[0]
            } else {
                issues.append(FieldIssue(.tangent(.t), "expected [\(b)] or [K, \(b)] like the input t, got \(Shape.describe(u.shape))"))
            }
        }
        if let kx, let kt, kx != kt {
            issues.append(
                FieldIssue(
                    .tangent(nil),
                    "the tangents of x and t must agree on K (unbatched or the same leading K), got \(Shape.describe(tangentX!.shape)) and \(Shape.describe(tangentT!.shape))"
                ))
        }
        if let u = tangentX, let issue = nonFinite(u, at: .tangent(.x)) { issues.append(issue) }
        if let u = tangentT, let issue = nonFinite(u, at: .tangent(.t)) { issues.append(issue) }
        if !issues.isEmpty { throw .invalid(issues) }
        let kLead = max(kx ?? 0, kt ?? 0)
        let k = max(kLead, 1)
        let rows = k * b
        let tr = try trace(inputs, derivatives: true, outputs: returnOutputs)
        let out: [S]
        if hasT, let ux = tangentX, case .linear(let first) = layers[0] {
            // linear ∘ concat fused: no [K·B, D+1] tangent copy.
            let u1 = first.forwardSplit(x: ux, t: tangentT, rows: rows, bias: false)
            out = try forwardSweep(tangents: u1, rows: rows, order: .kMajor, trace: tr, from: 1, to: layers.count)
        } else {
            let seed: [S] = withOptionalPointer(tangentX) { ux in
                withOptionalPointer(tangentT) { ut in Concat.jvp(x: ux, t: ut, rows: rows, width: d, hasT: hasT) }
            }
            out = try forwardSweep(tangents: seed, rows: rows, order: .kMajor, trace: tr, from: 0, to: layers.count)
        }
        let dOut = tr.outputWidth
        return JVPResult(
            outputs: returnOutputs ? tr.output : nil,
            jvp: Tensor(shape: (kLead > 0 ? [kLead] : []) + [b, dOut], scalars: out))
    }
}

/// Calls `body` with the base address of `a`'s elements, or with nil when `a` is nil.
func withOptionalPointer<S, R>(_ a: Tensor<S>?, _ body: (UnsafePointer<S>?) -> R) -> R {
    guard let a else { return body(nil) }
    return a.withUnsafeBufferPointer { body($0.baseAddress) }
}
