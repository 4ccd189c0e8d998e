/// `silu(z) = z σ(z)`; derivative `σ(z)(1 + z(1 − σ(z)))`.
struct SiLURule: ElementwiseRule {
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let s = SigmoidRule.sigmoid(z)
        return (z * s, s * (1 + z * (1 - s)))
    }
}
