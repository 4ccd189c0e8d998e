extension Model {
    /// `f(x, t)`: the outputs `[B, D']`.
    public func forward(_ inputs: Inputs<S>) throws(GradError) -> Tensor<S> {
        try validate(inputs)
        if let chunks = Parallel.chunks(inputs.batch) {
            return .concatenate(try Parallel.map(chunks) { (r) throws(GradError) in try forwardSerial(inputs.rows(r)) })
        }
        return try forwardSerial(inputs)
    }

    func forwardSerial(_ inputs: Inputs<S>) throws(GradError) -> Tensor<S> {
        try trace(inputs, derivatives: false).output
    }
}
