/// `elu(z) = z` for z > 0, `α(eᶻ − 1)` otherwise; derivative `α eᶻ` for z ≤ 0 (PyTorch's elu_backward).
struct ELURule: ElementwiseRule {
    let alpha: Double
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        if z > 0 { return (z, 1) }
        let a = S(alpha)
        let e = fastExp(z)
        return (a * (S.self == Float.self ? e - 1 : S.expMinusOne(z)), a * e)
    }
}
