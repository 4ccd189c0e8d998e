/// `sigmoid(z) = 1 / (1 + e⁻ᶻ)`; derivative `σ(1 − σ)`.
struct SigmoidRule: ElementwiseRule {
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let s = Self.sigmoid(z)
        return (s, s * (1 - s))
    }

    /// Logistic function without overflow for large |z|.
    @inline(__always)
    static func sigmoid<S: BLASScalar>(_ z: S) -> S {
        if z >= 0 { return 1 / (1 + S.exp(-z)) }
        let e = S.exp(z)
        return e / (1 + e)
    }
}
