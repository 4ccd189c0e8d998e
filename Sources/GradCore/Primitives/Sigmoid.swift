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
        // e^{-|z|} never overflows; both branches are selects, so the loop vectorizes.
        let e = fastExp(-Swift.abs(z))
        let s = 1 / (1 + e)
        return z >= 0 ? s : e * s
    }
}
