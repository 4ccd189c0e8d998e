/// The reference velocity network: x `[B, D]` ++ t → Linear(D+1, w) → SELU → depth × [Linear(w, w) → SELU] → Linear(w, D).
public enum ToyMLP {
    /// Builds it with PyTorch's default init (uniform ±1/√in), deterministically from `seed`.
    public static func make<S: BLASScalar>(
        d: Int = 784, width: Int = 64, hidden: Int = 2, seed: UInt64 = 0, as: S.Type = S.self
    ) -> Model<S> {
        var rng = SplitMix64(seed: seed)
        func uniform(_ shape: [Int], fanIn: Int) -> Tensor<S> {
            let bound = 1 / Double(fanIn).squareRoot()
            return Tensor(
                shape: shape,
                scalars: (0..<shape.reduce(1, *)).map { _ in
                    S((Double(rng.next() >> 11) / Double(1 << 53) * 2 - 1) * bound)
                })
        }
        var layers: [Layer<S>] = []
        let selu = OpDeclaration.selu.activation(OpArguments(values: [:]))
        var index = 0
        func linear(_ inF: Int, _ outF: Int) {
            layers.append(
                .linear(
                    Linear(
                        weight: uniform([outF, inF], fanIn: inF), bias: uniform([outF], fanIn: inF),
                        weightName: "net.\(index).weight", biasName: "net.\(index).bias")))
            index += 2
        }
        linear(d + 1, width)
        layers.append(.activation(selu))
        for _ in 0..<hidden {
            linear(width, width)
            layers.append(.activation(selu))
        }
        linear(width, d)
        return Model(hasT: true, layers: layers, inputWidth: d)
    }

    /// Inputs of the given batch, deterministic.
    public static func inputs<S: BLASScalar>(batch: Int, d: Int = 784, seed: UInt64 = 1) -> Inputs<S> {
        var rng = SplitMix64(seed: seed)
        func normalish() -> S { S(Double(rng.next() >> 11) / Double(1 << 53) * 2 - 1) }
        return Inputs(
            x: Tensor(shape: [batch, d], scalars: (0..<(batch * d)).map { _ in normalish() }),
            t: Tensor(shape: [batch], scalars: (0..<batch).map { _ in (normalish() + 1) / 2 }))
    }
}

extension Model {
    /// FLOPs of one forward pass at batch `b` (GEMMs only).
    public func forwardFlops(batch b: Int) -> Double {
        layers.reduce(0.0) { acc, layer in
            if case .linear(let lin) = layer { return acc + 2 * Double(b) * Double(lin.inFeatures * lin.outFeatures) }
            return acc
        }
    }
}
