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
    /// The model output `[B, D']`.
    let output: [S]

    var outputWidth: Int { widths[widths.count - 1] }
}

extension Model {
    /// Runs the model on `inputs`, keeping derivatives when a sweep will follow.
    func trace(_ inputs: Inputs<S>, derivatives wantDerivatives: Bool) -> ForwardTrace<S> {
        let b = inputs.batch
        let d = inputs.width
        let widths = self.widths(d: d)
        var h: [S] = inputs.x.scalars.withUnsafeBufferPointer { x in
            if let t = inputs.t {
                return t.scalars.withUnsafeBufferPointer { Concat.forward(x: x.baseAddress!, t: $0.baseAddress!, rows: b, width: d) }
            }
            return Concat.forward(x: x.baseAddress!, t: nil, rows: b, width: d)
        }
        var layerInputs: [[S]] = []
        var derivatives: [[S]?] = []
        layerInputs.reserveCapacity(layers.count)
        derivatives.reserveCapacity(layers.count)
        for (l, layer) in layers.enumerated() {
            layerInputs.append(h)
            let n = b * widths[l + 1]
            switch layer {
            case .linear(let lin):
                derivatives.append(nil)
                h = [S](unsafeUninitializedCapacity: n) { y, count in
                    h.withUnsafeBufferPointer { lin.forward($0.baseAddress!, rows: b, into: y.baseAddress!) }
                    count = n
                }
            case .activation(.identity):
                derivatives.append(nil)
            case .activation(let act):
                var dv: [S]? = nil
                let y = [S](unsafeUninitializedCapacity: n) { y, count in
                    h.withUnsafeBufferPointer { z in
                        if wantDerivatives {
                            dv = [S](unsafeUninitializedCapacity: n) { dd, dc in
                                act.apply(z.baseAddress!, into: y.baseAddress!, derivative: dd.baseAddress!, count: n)
                                dc = n
                            }
                        } else {
                            act.apply(z.baseAddress!, into: y.baseAddress!, derivative: nil, count: n)
                        }
                    }
                    count = n
                }
                derivatives.append(dv)
                h = y
            }
        }
        return ForwardTrace(batch: b, d: d, widths: widths, layerInputs: layerInputs, derivatives: derivatives, output: h)
    }
}
