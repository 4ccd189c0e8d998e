/// The elementwise activations of the model format, with PyTorch's formulas and defaults.
public enum Activation: Sendable, Equatable {
    case relu
    case leakyReLU(negativeSlope: Double)
    case elu(alpha: Double)
    case selu
    case gelu(approximate: GELUApproximation)
    case silu
    case sigmoid
    case tanh
    case softplus(beta: Double, threshold: Double)
    case identity

    /// The `op` names of the model format.
    public static let opNames = [
        "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "sigmoid", "tanh", "softplus", "identity",
    ]

    /// The `op` name in the model format.
    public var op: String {
        switch self {
        case .relu: "relu"
        case .leakyReLU: "leaky_relu"
        case .elu: "elu"
        case .selu: "selu"
        case .gelu: "gelu"
        case .silu: "silu"
        case .sigmoid: "sigmoid"
        case .tanh: "tanh"
        case .softplus: "softplus"
        case .identity: "identity"
        }
    }

    /// Computes `y = σ(z)` for `count` elements, and `d = σ'(z)` when `d` is given.
    ///
    /// The switch happens once per call so every rule's loop is specialized.
    func apply<S: BLASScalar>(
        _ z: UnsafePointer<S>, into y: UnsafeMutablePointer<S>, derivative d: UnsafeMutablePointer<S>?, count: Int
    ) {
        switch self {
        case .relu: Elementwise.run(ReLURule(), z, y, d, count: count)
        case .leakyReLU(let s): Elementwise.run(LeakyReLURule(negativeSlope: s), z, y, d, count: count)
        case .elu(let a): Elementwise.run(ELURule(alpha: a), z, y, d, count: count)
        case .selu: Elementwise.run(SELURule(), z, y, d, count: count)
        case .gelu(.none): Elementwise.run(GELURule(), z, y, d, count: count)
        case .gelu(.tanh): Elementwise.run(GELUTanhRule(), z, y, d, count: count)
        case .silu: Elementwise.run(SiLURule(), z, y, d, count: count)
        case .sigmoid: Elementwise.run(SigmoidRule(), z, y, d, count: count)
        case .tanh: Elementwise.run(TanhRule(), z, y, d, count: count)
        case .softplus(let b, let t): Elementwise.run(SoftplusRule(beta: b, threshold: t), z, y, d, count: count)
        case .identity: Elementwise.run(IdentityRule(), z, y, d, count: count)
        }
    }

    /// Scalar form, for tests and finite differences.
    public func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        var zz = z
        var y: S = 0
        var d: S = 0
        withUnsafePointer(to: &zz) { zp in
            withUnsafeMutablePointer(to: &y) { yp in
                withUnsafeMutablePointer(to: &d) { dp in apply(zp, into: yp, derivative: dp, count: 1) }
            }
        }
        return (y, d)
    }
}
