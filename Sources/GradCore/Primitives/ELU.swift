/// `elu(z) = z` for z > 0, `α(eᶻ − 1)` otherwise; derivative `α eᶻ` for z ≤ 0 (PyTorch's elu_backward).
struct ELURule: ElementwiseRule {
    let alpha: Double
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        if z > 0 { return (z, 1) }
        let a = S(alpha)
        return (a * S.expMinusOne(z), a * S.exp(z))
    }
}
