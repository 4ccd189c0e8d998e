import GradCodec
import GradCore
import Testing

/// Splitting a batch into row chunks computed at once gives the same answers as one sweep.
@Suite("Row-parallel transforms", .serialized)
struct ParallelTests {
    /// One model ending with an activation (identity seeds), one ending with a linear layer (seeds = W rows).
    static let models = [
        DerivativeTests.modelJSON(#"{"op": "selu"}"#, t: true, dtype: "float64", dOut: 4),
        #"{"dtype": "float64", "inputs": ["x", "t"], "layers": [{"op": "linear", "weight": [[1, -2, 0.5, 3, 1], [0.2, 1, -1, 2, 0.1], [1, 1, 1, 1, 1]]}, {"op": "tanh"}, {"op": "linear", "weight": [[0.3, -1, 2], [1, 0.5, -0.2], [2, 1, 1], [-1, 0, 1]], "bias": [0.1, 0.2, 0.3, 0.4]}]}"#,
    ]

    /// B = 7 on 2, 3 or 16 chunks also takes the output-row split of small, unevenly divisible batches.
    @Test(arguments: models)
    func chunksAgreeWithSerial(json: String) throws {
        guard case .float64(let m) = try model(json) else { fatalError() }
        var rng = TestRNG(17)
        let b = 7
        let inputs = Inputs<Double>(x: rng.tensor([b, 4]), t: rng.tensor([b]))
        let v: Tensor<Double> = rng.tensor([b, 4])
        let u: Tensor<Double> = rng.tensor([b, 4])
        func all() throws -> [Tensor<Double>] {
            let g = try m.vjp(inputs, gradOutputs: v, wrt: [.x, .t, .params])
            let j = try m.jacobian(inputs, wrt: [.x, .t])
            return [try m.forward(inputs), g.x!, g.t!] + g.params.map(\.grad)
                + [try m.jvp(inputs, tangentX: u, tangentT: nil).jvp, j.x!, j.t!, try m.divergence(inputs)]
                + [try m.jacobian(inputs, wrt: [.x]).x!]  // t computed by the sweep but not asked for
        }
        let serial = try all()
        for threads in [2, 3, 16] {
            let split = try Parallel.run(threads: threads) { try all() }
            for (a, e) in zip(split, serial) { expectClose(a, e, tol: 1e-13, "threads \(threads)") }
        }
    }
}
