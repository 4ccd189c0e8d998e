import GradCodec
import GradCore
import Testing

/// The seed notebook's check: with v = y, the VJP equals `einsum('bi,bij->bj', v, J)`,
/// and the transposed contraction `einsum('bi,bji->bj', v, J)` (a JVP) does not.
@Suite("Seed check")
struct SeedCheckTests {
    @Test func vjpIsVTransposeJ() throws {
        guard case .float64(let m) = try model(DerivativeTests.modelJSON(#"{"op": "selu"}"#, t: true, dtype: "float64", dOut: 4)) else { fatalError() }
        var rng = TestRNG(21)
        let b = 3
        let d = 4
        let inputs = Inputs<Double>(x: rng.tensor([b, d]), t: rng.tensor([b]))
        let y = try m.forward(inputs)
        let vjp = try m.vjp(inputs, gradOutputs: y).x!
        let j = try m.jacobian(inputs).x!  // [B, D', D]
        var right = [Double](repeating: 0, count: b * d)
        var transposed = [Double](repeating: 0, count: b * d)
        for bb in 0..<b {
            for jj in 0..<d {
                for i in 0..<d {
                    right[bb * d + jj] += y.scalars[bb * d + i] * j.scalars[(bb * d + i) * d + jj]
                    transposed[bb * d + jj] += y.scalars[bb * d + i] * j.scalars[(bb * d + jj) * d + i]
                }
            }
        }
        #expect(relativeError(vjp.scalars, right) < 1e-12)
        #expect(relativeError(vjp.scalars, transposed) > 1e-2, "the transposed contraction must not match")
    }
}
