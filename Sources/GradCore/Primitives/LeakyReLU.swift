/// `leaky_relu(z) = z` for z > 0, `negative_slope · z` otherwise; derivative at 0 is the slope (PyTorch).
struct LeakyReLURule: ElementwiseRule {
    let negativeSlope: Double
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let s = S(negativeSlope)
        return z > 0 ? (z, 1) : (s * z, s)
    }
}
