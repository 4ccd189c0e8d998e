extension Model {
    /// `f(x, t)`: the outputs `[B, D']`.
    public func forward(_ inputs: Inputs<S>) throws(GradError) -> Tensor<S> {
        try validate(inputs)
        let tr = trace(inputs, derivatives: false)
        return Tensor(shape: [tr.batch, tr.outputWidth], scalars: tr.output)
    }
}
