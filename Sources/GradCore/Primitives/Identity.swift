/// `identity(z) = z`; derivative 1. The sweeps skip it entirely.
struct IdentityRule: ElementwiseRule {
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) { (z, 1) }
}
