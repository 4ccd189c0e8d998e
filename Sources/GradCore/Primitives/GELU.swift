/// How `gelu` approximates the normal CDF, as PyTorch's `approximate` argument.
public enum GELUApproximation: String, Sendable, Equatable, CaseIterable {
    case none
    case tanh
}

/// `gelu(z) = z Φ(z)`; derivative `Φ(z) + z φ(z)`.
struct GELURule: ElementwiseRule {
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let cdf = (1 + S.erf(z * S(0.70710678118654752440084436210485))) / 2
        let pdf = S.exp(-z * z / 2) * S(0.39894228040143267793994605993438)
        return (z * cdf, cdf + z * pdf)
    }
}

/// `gelu(z, approximate="tanh") = z/2 · (1 + tanh(√(2/π)(z + 0.044715 z³)))`, differentiated as written.
struct GELUTanhRule: ElementwiseRule {
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let k = S(0.79788456080286535587989211986876)  // √(2/π)
        let c = S(0.044715)
        let z2 = z * z
        let th = S.tanh(k * (z + c * z2 * z))
        let value = z * (1 + th) / 2
        let derivative = (1 + th) / 2 + z * (1 - th * th) * k * (1 + 3 * c * z2) / 2
        return (value, derivative)
    }
}
