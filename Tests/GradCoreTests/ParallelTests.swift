import GradCodec
import GradCore
import Testing

/// Splitting a batch into row chunks computed at once gives the same answers as one sweep.
@Suite("Row-parallel transforms", .serialized)
struct ParallelTests {
    @Test func chunksAgreeWithSerial() throws {
        guard case .float64(let m) = try model(DerivativeTests.modelJSON(#"{"op": "selu"}"#, t: true, dtype: "float64", dOut: 4)) else { fatalError() }
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
        }
        let previous = Parallel.threads
        defer { Parallel.threads = previous }
        Parallel.threads = 1
        let serial = try all()
        for threads in [2, 3, 16] {
            Parallel.threads = threads
            let split = try all()
            for (a, e) in zip(split, serial) { expectClose(a, e, tol: 1e-13, "threads \(threads)") }
        }
    }
}
