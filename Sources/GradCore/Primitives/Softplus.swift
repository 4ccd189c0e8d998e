/// `softplus(z) = log(1 + e^{βz}) / β`, and `z` itself where `βz > threshold` (PyTorch);
/// derivative `σ(βz)`, and 1 above the threshold.
struct SoftplusRule: ElementwiseRule {
    let beta: Double
    let threshold: Double
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let b = S(beta)
        let bz = b * z
        if bz > S(threshold) { return (z, 1) }
        // log1p(e^{bz}) written so that it cannot overflow when the threshold is large.
        let value = (Swift.max(bz, 0) + S.log(onePlus: fastExp(-Swift.abs(bz)))) / b
        return (value, SigmoidRule.sigmoid(bz))
    }
}
