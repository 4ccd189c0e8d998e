/// Every elementwise activation of the model format: its declaration (name, fields, formula,
/// PyTorch counterpart) and its rule (value and derivative, fused in one pass), side by side.
/// ``OpDeclaration/all`` lists them; the decoder, the encoder, the OpenAPI schema and the docs
/// table follow from it. Adding an activation is one rule and one declaration here, one entry
/// in `all`, and its tests (`Tests/GradCoreTests/DerivativeTests.swift` takes every op).
extension OpDeclaration {
    /// Every op of the model format, in documentation order.
    public static let all: [OpDeclaration] = [
        .linear, .relu, .leakyReLU, .elu, .selu, .gelu, .silu, .sigmoid, .tanh, .softplus, .identity,
    ]

    static let relu = OpDeclaration(activation: "relu", formula: "max(z, 0)", pytorch: "nn.ReLU") { _ in ActivationKernel(ReLURule()) }

    static let leakyReLU = OpDeclaration(
        activation: "leaky_relu", formula: "z if z > 0 else negative_slope·z", pytorch: "nn.LeakyReLU",
        fields: [.number("negative_slope", default: 0.01, "slope for z ≤ 0")]
    ) { a in ActivationKernel(LeakyReLURule(negativeSlope: a.number("negative_slope"))) }

    static let elu = OpDeclaration(
        activation: "elu", formula: "z if z > 0 else alpha·(eᶻ − 1)", pytorch: "nn.ELU",
        fields: [.number("alpha", default: 1, "scale of the negative branch")]
    ) { a in ActivationKernel(ELURule(alpha: a.number("alpha"))) }

    static let selu = OpDeclaration(activation: "selu", formula: "scale·elu(z, α) with PyTorch's constants", pytorch: "nn.SELU") { _ in
        ActivationKernel(SELURule())
    }

    static let gelu = OpDeclaration(
        activation: "gelu", formula: "z·Φ(z), or its tanh approximation", pytorch: "nn.GELU",
        fields: [.choice("approximate", ["none", "tanh"], default: "none", "\"tanh\" for the tanh approximation")]
    ) { a in a.choice("approximate") == "tanh" ? ActivationKernel(GELUTanhRule()) : ActivationKernel(GELURule()) }

    static let silu = OpDeclaration(activation: "silu", formula: "z·σ(z)", pytorch: "nn.SiLU") { _ in ActivationKernel(SiLURule()) }

    static let sigmoid = OpDeclaration(activation: "sigmoid", formula: "1 / (1 + e⁻ᶻ)", pytorch: "nn.Sigmoid") { _ in
        ActivationKernel(SigmoidRule())
    }

    static let tanh = OpDeclaration(activation: "tanh", formula: "tanh(z)", pytorch: "nn.Tanh") { _ in ActivationKernel(TanhRule()) }

    static let softplus = OpDeclaration(
        activation: "softplus", formula: "log(1 + e^{beta·z}) / beta, and z where beta·z > threshold", pytorch: "nn.Softplus",
        fields: [
            .number("beta", default: 1, excluding: 0, "sharpness; must not be 0"),
            .number("threshold", default: 20, "where beta·z > threshold the op is the identity"),
        ]
    ) { a in ActivationKernel(SoftplusRule(beta: a.number("beta"), threshold: a.number("threshold"))) }

    static let identity = OpDeclaration(activation: "identity", formula: "z", pytorch: "nn.Identity") { _ in
        ActivationKernel(IdentityRule(), isIdentity: true)
    }
}

/// `relu(z) = max(z, 0)`; derivative 1 for z > 0 and 0 otherwise (PyTorch: relu'(0) = 0).
struct ReLURule: ElementwiseRule {
    static func evaluationCost<S: BLASScalar>(_: S.Type) -> Int { 10 }
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        z > 0 ? (z, 1) : (0, 0)
    }
}

/// `leaky_relu(z) = z` for z > 0, `negative_slope · z` otherwise; derivative at 0 is the slope (PyTorch).
struct LeakyReLURule: ElementwiseRule {
    static func evaluationCost<S: BLASScalar>(_: S.Type) -> Int { 10 }
    let negativeSlope: Double
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let s = S(negativeSlope)
        return z > 0 ? (z, 1) : (s * z, s)
    }
}

/// `elu(z) = z` for z > 0, `α(eᶻ − 1)` otherwise; derivative `α eᶻ` for z ≤ 0 (PyTorch's elu_backward).
struct ELURule: ElementwiseRule {
    /// `fastExp` in float32 (~1 ns); float64's value calls `expm1`.
    static func evaluationCost<S: BLASScalar>(_: S.Type) -> Int { S.self == Float.self ? 100 : 3_000 }
    let alpha: Double
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        if z > 0 { return (z, 1) }
        let a = S(alpha)
        let e = fastExp(z)
        return (a * (S.self == Float.self ? e - 1 : S.expMinusOne(z)), a * e)
    }
}

/// `selu(z) = scale · elu(z, α)` with PyTorch's constants.
struct SELURule: ElementwiseRule {
    /// `fastExp` in float32 (~1 ns); float64's value calls `expm1`.
    static func evaluationCost<S: BLASScalar>(_: S.Type) -> Int { S.self == Float.self ? 100 : 3_000 }
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

/// `gelu(z) = z Φ(z)`; derivative `Φ(z) + z φ(z)`.
struct GELURule: ElementwiseRule {
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let cdf = (1 + S.erf(z * S(0.70710678118654752440084436210485))) / 2
        let pdf = S.exp(-z * z / 2) * S(0.39894228040143267793994605993438)
        return (z * cdf, cdf + z * pdf)
    }
}

/// `gelu(z, approximate="tanh") = z/2 · (1 + tanh(√(2/π)(z + 0.044715 z³)))`, differentiated as written.
struct GELUTanhRule: ElementwiseRule {
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let k = S(0.79788456080286535587989211986876)  // √(2/π)
        let c = S(0.044715)
        let z2 = z * z
        let th = S.tanh(k * (z + c * z2 * z))
        let value = z * (1 + th) / 2
        let derivative = (1 + th) / 2 + z * (1 - th * th) * k * (1 + 3 * c * z2) / 2
        return (value, derivative)
    }
}

/// `silu(z) = z σ(z)`; derivative `σ(z)(1 + z(1 − σ(z)))`.
struct SiLURule: ElementwiseRule {
    /// `fastExp`, vectorized: ~1 ns.
    static func evaluationCost<S: BLASScalar>(_: S.Type) -> Int { 100 }
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let s = SigmoidRule.sigmoid(z)
        return (z * s, s * (1 + z * (1 - s)))
    }
}

/// `sigmoid(z) = 1 / (1 + e⁻ᶻ)`; derivative `σ(1 − σ)`.
struct SigmoidRule: ElementwiseRule {
    /// `fastExp`, vectorized: ~1 ns.
    static func evaluationCost<S: BLASScalar>(_: S.Type) -> Int { 100 }
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

/// `tanh(z)`; derivative `1 − tanh²(z)`.
struct TanhRule: ElementwiseRule {
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        let t = S.tanh(z)
        return (t, 1 - t * t)
    }
}

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

/// `identity(z) = z`; derivative 1. The sweeps skip it entirely.
struct IdentityRule: ElementwiseRule {
    static func evaluationCost<S: BLASScalar>(_: S.Type) -> Int { 10 }
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) { (z, 1) }
}
