extension Model {
    /// The per-sample Jacobian the slow way: one single-row VJP per (sample, output) pair, each
    /// re-running the forward — what a Python loop over `torch.autograd.grad` does. Kept only as
    /// the contrast in benchmarks; ``jacobian(_:wrt:mode:)`` is one batched sweep.
    public func rowLoopJacobian(_ inputs: Inputs<S>) throws(GradError) -> Tensor<S> {
        try validate(inputs)
        let b = inputs.batch
        let d = inputs.width
        let dOut = outputWidth(d: d)
        var j = [S](repeating: 0, count: b * dOut * d)
        for bb in 0..<b {
            let row = Inputs(
                x: Tensor(shape: [1, d], scalars: Array(inputs.x.scalars[(bb * d)..<((bb + 1) * d)])),
                t: inputs.t.map { Tensor(shape: [1], scalars: [$0.scalars[bb]]) })
            for i in 0..<dOut {
                var e = [S](repeating: 0, count: dOut)
                e[i] = 1
                let g = try vjp(row, gradOutputs: Tensor(shape: [1, dOut], scalars: e)).x!
                j.replaceSubrange(((bb * dOut + i) * d)..<((bb * dOut + i + 1) * d), with: g.scalars)
            }
        }
        return Tensor(shape: [b, dOut, d], scalars: j)
    }
}
