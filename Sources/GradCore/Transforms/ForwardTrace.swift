/// What a forward pass keeps for the sweeps: every layer's input and every activation's derivative.
struct ForwardTrace<S: BLASScalar> {
    /// B.
    let batch: Int
    /// D (width of x, without t).
    let d: Int
    /// Widths at layer boundaries; `widths[0]` is `[x | t]`.
    let widths: [Int]
    /// `layerInputs[l]` is the input of layer l (`[B, widths[l]]`); arrays are shared, not copied.
    let layerInputs: [[S]]
    /// `σ'(z)` of activation layer l (`[B, widths[l]]`); nil for linear and identity layers.
    let derivatives: [[S]?]
    /// The model output `[B, D']` (a ``ResultArena``'s when one is installed); empty when the
    /// trace was taken without outputs.
    let output: Tensor<S>

    var outputWidth: Int { widths[widths.count - 1] }
}

extension Model {
    /// Runs the model on `inputs`, keeping derivatives when a sweep will follow.
    ///
    /// With `outputs: false` a final linear layer is not evaluated: no sweep needs its output
    /// (its VJP and JVP rules use only its input and weight), which saves a quarter of the
    /// ToyMLP's forward GEMM work when the caller asked for derivatives only.
    ///
    /// Unless `concatenatedInput` is asked for (parameter gradients of the first layer need it), a
    /// first linear layer reads x and t in place: `x W[:, :D]ᵀ + t W[:, D]ᵀ + b`, two GEMMs and no
    /// `[B, D+1]` copy.
    func trace(
        _ inputs: Inputs<S>, derivatives wantDerivatives: Bool, outputs wantOutputs: Bool = true, concatenatedInput: Bool = false
    ) throws(GradError) -> ForwardTrace<S> {
        let b = inputs.batch
        let d = inputs.width
        let widths = self.widths(d: d)
        if !concatenatedInput, hasT, let t = inputs.t, case .linear(let first) = layers[0], layers.count > 1 || wantOutputs {
            let y = first.forwardSplit(x: inputs.x, t: t, rows: b)
            return try trace(from: 1, h: y, firstInput: [], batch: b, d: d, widths: widths, derivatives: wantDerivatives, outputs: wantOutputs)
        }
        let h: [S] = inputs.x.withUnsafeBufferPointer { x in
            withOptionalPointer(inputs.t) { t in Concat.forward(x: x.baseAddress!, t: t, rows: b, width: d) }
        }
        return try trace(from: 0, h: h, firstInput: nil, batch: b, d: d, widths: widths, derivatives: wantDerivatives, outputs: wantOutputs)
    }

    /// Runs layers `from...` on `h`; `firstInput` stands for the input of layer 0 when it was skipped.
    private func trace(
        from start: Int, h initial: [S], firstInput: [S]?, batch b: Int, d: Int, widths: [Int], derivatives wantDerivatives: Bool,
        outputs wantOutputs: Bool
    ) throws(GradError) -> ForwardTrace<S> {
        var h = initial
        var layerInputs: [[S]] = firstInput.map { [$0] } ?? []
        var derivatives: [[S]?] = firstInput == nil ? [] : [nil]
        layerInputs.reserveCapacity(layers.count)
        derivatives.reserveCapacity(layers.count)
        var output: Tensor<S>? = nil
        for (l, layer) in layers.enumerated() where l >= start {
            try Cancellation.checkpoint()
            layerInputs.append(h)
            let n = b * widths[l + 1]
            let last = l == layers.count - 1
            switch layer {
            case .linear(let lin):
                derivatives.append(nil)
                if last {
                    if wantOutputs {
                        output = .result(shape: [b, widths[l + 1]]) { y in h.withUnsafeBufferPointer { lin.forward($0.baseAddress!, rows: b, into: y) } }
                    }
                    h = []
                    break
                }
                h = [S](unsafeUninitializedCapacity: n) { y, count in
                    h.withUnsafeBufferPointer { lin.forward($0.baseAddress!, rows: b, into: y.baseAddress!) }
                    count = n
                }
            case .activation(let act) where act.isIdentity:
                derivatives.append(nil)
            case .activation(let act):
                var dv: [S]? = nil
                func apply(into y: UnsafeMutablePointer<S>) {
                    h.withUnsafeBufferPointer { z in
                        if wantDerivatives {
                            dv = [S](unsafeUninitializedCapacity: n) { dd, dc in
                                act.apply(z.baseAddress!, into: y, derivative: dd.baseAddress!, count: n)
                                dc = n
                            }
                        } else {
                            act.apply(z.baseAddress!, into: y, derivative: nil, count: n)
                        }
                    }
                }
                if last, wantOutputs {
                    output = .result(shape: [b, widths[l + 1]]) { apply(into: $0) }
                    h = []
                } else {
                    h = [S](unsafeUninitializedCapacity: n) { y, count in
                        apply(into: y.baseAddress!)
                        count = n
                    }
                }
                derivatives.append(dv)
            }
        }
        let out = output ?? (h.isEmpty ? Tensor(shape: [0], scalars: []) : Tensor(shape: [b, widths[widths.count - 1]], scalars: h))
        return ForwardTrace(batch: b, d: d, widths: widths, layerInputs: layerInputs, derivatives: derivatives, output: out)
    }
}
