import GradCodec
import GradCore
import Testing

@Suite("Divergence")
struct DivergenceTests {
    static let squareModels: [String] = DerivativeTests.activations.prefix(6).map {
        DerivativeTests.modelJSON($0, t: true, dtype: "float64", dOut: 4)
    }

    /// The cyclic-trace shortcut must equal the trace of the full Jacobian.
    @Test("exact divergence = trace of the Jacobian", arguments: squareModels)
    func exactIsTrace(json: String) throws {
        guard case .float64(let m) = try model(json) else { fatalError() }
        var rng = TestRNG(4)
        let inputs = Inputs<Double>(x: rng.tensor([5, 4]), t: rng.tensor([5]))
        let div = try m.divergence(inputs)
        let j = try m.jacobian(inputs).x!
        var trace = [Double](repeating: 0, count: 5)
        for b in 0..<5 {
            for i in 0..<4 { trace[b] += j.scalars[(b * 4 + i) * 4 + i] }
        }
        #expect(relativeError(div.scalars, trace) < 1e-12)
    }

    @Test("models without a linear at both ends use the general path")
    func generalPath() throws {
        let m = try model(#"{"layers": [{"op": "tanh"}, {"op": "linear", "weight": [[1, 2], [3, 4]]}, {"op": "sigmoid"}], "dtype": "float64"}"#)
        guard case .float64(let mm) = m else { fatalError() }
        let inputs = Inputs<Double>(x: Tensor(shape: [1, 2], scalars: [0.3, -0.2]))
        let j = try mm.jacobian(inputs).x!
        let div = try mm.divergence(inputs)
        #expect(abs(div.scalars[0] - (j.scalars[0] + j.scalars[3])) < 1e-14)
    }

    @Test("Hutchinson is exact for a diagonal Jacobian and reproducible by seed")
    func hutchinson() throws {
        guard case .float64(let m) = try model(#"{"layers": [{"op": "tanh"}], "dtype": "float64"}"#) else { fatalError() }
        var rng = TestRNG(8)
        let inputs = Inputs<Double>(x: rng.tensor([3, 6]))
        let exact = try m.divergence(inputs, method: .exact)
        let est = try m.divergence(inputs, method: .hutchinson(probes: 4, seed: 1))
        #expect(relativeError(est.scalars, exact.scalars) < 1e-14)

        guard case .float64(let dense) = try model(Self.squareModels[0]) else { fatalError() }
        let x = Inputs<Double>(x: rng.tensor([2, 4]), t: rng.tensor([2]))
        let a = try dense.divergence(x, method: .hutchinson(probes: 16, seed: 42))
        let b = try dense.divergence(x, method: .hutchinson(probes: 16, seed: 42))
        let c = try dense.divergence(x, method: .hutchinson(probes: 16, seed: 43))
        #expect(a == b)
        #expect(a != c)
        // Many probes converge to the exact trace.
        let many = try dense.divergence(x, method: .hutchinson(probes: 20000, seed: 5))
        let ex = try dense.divergence(x)
        #expect(relativeError(many.scalars, ex.scalars) < 0.05)
    }

    @Test("divergence needs D' = D")
    func needsSquare() throws {
        guard case .float64(let m) = try model(DerivativeTests.modelJSON(#"{"op": "relu"}"#, t: false, dtype: "float64", dOut: 3)) else { fatalError() }
        #expect(throws: GradError.self) { try m.divergence(Inputs(x: Tensor(zeros: [1, 4]))) }
    }
}
