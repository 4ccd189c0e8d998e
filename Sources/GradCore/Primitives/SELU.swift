/// `selu(z) = scale · elu(z, α)` with PyTorch's constants.
struct SELURule: ElementwiseRule {
    static let alpha = 1.6732632423543772848170429916717
    static let scale = 1.0507009873554804934193349852946
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let scale = S(Self.scale)
        if z > 0 { return (scale * z, scale) }
        let sa = S(Self.scale * Self.alpha)
        let e = fastExp(z)
        return (sa * (S.self == Float.self ? e - 1 : S.expMinusOne(z)), sa * e)
    }
}
