/// `tanh(z)`; derivative `1 − tanh²(z)`.
struct TanhRule: ElementwiseRule {
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let t = S.tanh(z)
        return (t, 1 - t * t)
    }
}
