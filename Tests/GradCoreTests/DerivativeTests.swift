import GradCodec
import GradCore
import Testing

/// Every primitive three ways: finite differences (float64), the adjoint identity, and
/// Jacobian rows/columns against VJP/JVP of basis vectors; reverse = forward = auto.
@Suite("Derivative identities")
struct DerivativeTests {
    static let activations: [String] = [
        #"{"op": "relu"}"#, #"{"op": "leaky_relu", "negative_slope": 0.2}"#, #"{"op": "leaky_relu"}"#,
        #"{"op": "elu", "alpha": 0.5}"#, #"{"op": "selu"}"#, #"{"op": "gelu"}"#, #"{"op": "gelu", "approximate": "tanh"}"#,
        #"{"op": "silu"}"#, #"{"op": "sigmoid"}"#, #"{"op": "tanh"}"#, #"{"op": "softplus", "beta": 2, "threshold": 1}"#,
        #"{"op": "softplus"}"#, #"{"op": "identity"}"#,
    ]

    /// `linear → act → linear → act` with D = 4 (+t), hidden 5, D' = 3 (or 4 for divergence).
    static func modelJSON(_ act: String, t: Bool, dtype: String, dOut: Int = 3, seed: UInt64 = 7) -> String {
        var rng = TestRNG(seed)
        let d0 = t ? 5 : 4
        return """
            {"inputs": \(t ? #"["x", "t"]"# : #"["x"]"#), "dtype": "\(dtype)", "layers": [
              {"op": "linear", "weight": \(randomJSON([5, d0], &rng)), "bias": \(randomJSON([5], &rng))},
              \(act),
              {"op": "linear", "weight": \(randomJSON([dOut, 5], &rng)), "bias": \(randomJSON([dOut], &rng))},
              \(act)]}
            """
    }

    static let cases: [(String, Bool)] = activations.flatMap { [($0, false), ($0, true)] }

    @Test("finite differences, float64", arguments: cases)
    func finiteDifferences(act: String, t: Bool) throws {
        guard case .float64(let m) = try model(Self.modelJSON(act, t: t, dtype: "float64")) else { fatalError() }
        var rng = TestRNG(11)
        let b = 3
        let inputs = Inputs<Double>(x: rng.tensor([b, 4], scale: 1.5), t: t ? rng.tensor([b]) : nil)
        let jac = try m.jacobian(inputs, wrt: t ? [.x, .t] : [.x], mode: .reverse)
        let h = 1e-6
        for j in 0..<(t ? 5 : 4) {
            var plus = inputs
            var minus = inputs
            for bb in 0..<b {
                if j < 4 {
                    plus.x.scalars[bb * 4 + j] += h
                    minus.x.scalars[bb * 4 + j] -= h
                } else {
                    plus.t!.scalars[bb] += h
                    minus.t!.scalars[bb] -= h
                }
            }
            let yp = try m.forward(plus).scalars
            let ym = try m.forward(minus).scalars
            for bb in 0..<b {
                for i in 0..<3 {
                    let fd = (yp[bb * 3 + i] - ym[bb * 3 + i]) / (2 * h)
                    let an = j < 4 ? jac.x!.scalars[(bb * 3 + i) * 4 + j] : jac.t!.scalars[bb * 3 + i]
                    #expect(abs(fd - an) <= 1e-6 * max(1, abs(an)), "\(act) ∂y\(i)/∂in\(j) sample \(bb): fd \(fd) vs \(an)")
                }
            }
        }
    }

    @Test("adjoint identity <vjp(c), u> = <c, jvp(u)>", arguments: cases)
    func adjoint(act: String, t: Bool) throws {
        try adjointCheck(act, t: t, dtype: "float64", Double.self, tol: 1e-12)
        try adjointCheck(act, t: t, dtype: "float32", Float.self, tol: 1e-5)
    }

    func adjointCheck<S: BLASScalar>(_ act: String, t: Bool, dtype: String, _: S.Type, tol: Double) throws {
        let any = try model(Self.modelJSON(act, t: t, dtype: dtype))
        let m: Model<S> = try #require(
            { () -> Model<S>? in
                switch any {
                case .float32(let m): m as? Model<S>
                case .float64(let m): m as? Model<S>
                }
            }())
        var rng = TestRNG(5)
        let b = 4
        let k = 3
        let inputs = Inputs<S>(x: rng.tensor([b, 4]), t: t ? rng.tensor([b]) : nil)
        let c: Tensor<S> = rng.tensor([k, b, 3])
        let ux: Tensor<S> = rng.tensor([k, b, 4])
        let ut: Tensor<S>? = t ? rng.tensor([k, b]) : nil
        let v = try m.vjp(inputs, gradOutputs: c, isGradsBatched: true, wrt: t ? [.x, .t] : [.x])
        let j = try m.jvp(inputs, tangentX: ux, tangentT: ut)
        for kk in 0..<k {
            var lhs = 0.0
            var rhs = 0.0
            var mag = 0.0
            for i in 0..<(b * 4) {
                lhs += Double(v.x!.scalars[kk * b * 4 + i]) * Double(ux.scalars[kk * b * 4 + i])
                mag += abs(Double(v.x!.scalars[kk * b * 4 + i]) * Double(ux.scalars[kk * b * 4 + i]))
            }
            if t {
                for i in 0..<b {
                    lhs += Double(v.t!.scalars[kk * b + i]) * Double(ut!.scalars[kk * b + i])
                    mag += abs(Double(v.t!.scalars[kk * b + i]) * Double(ut!.scalars[kk * b + i]))
                }
            }
            for i in 0..<(b * 3) { rhs += Double(c.scalars[kk * b * 3 + i]) * Double(j.jvp.scalars[kk * b * 3 + i]) }
            #expect(abs(lhs - rhs) <= tol * max(1, mag), "\(act) \(dtype) k=\(kk): \(lhs) vs \(rhs)")
        }
    }

    @Test("Jacobian rows = VJP(eᵢ), columns = JVP(eⱼ), reverse = forward = auto", arguments: cases)
    func rowsAndColumns(act: String, t: Bool) throws {
        guard case .float64(let m) = try model(Self.modelJSON(act, t: t, dtype: "float64")) else { fatalError() }
        var rng = TestRNG(3)
        let b = 2
        let inputs = Inputs<Double>(x: rng.tensor([b, 4]), t: t ? rng.tensor([b]) : nil)
        let wrt: Set<GradTarget> = t ? [.x, .t] : [.x]
        let rev = try m.jacobian(inputs, wrt: wrt, mode: .reverse)
        let fwd = try m.jacobian(inputs, wrt: wrt, mode: .forward)
        let auto = try m.jacobian(inputs, wrt: wrt, mode: .auto)
        #expect(rev.mode == .reverse && fwd.mode == .forward && auto.mode != .auto)
        expectClose(fwd.x, rev.x, tol: 1e-13, "forward = reverse (x)")
        expectClose(auto.x, rev.x, tol: 1e-13, "auto = reverse (x)")
        if t {
            expectClose(fwd.t, rev.t, tol: 1e-13, "forward = reverse (t)")
            expectClose(auto.t, rev.t, tol: 1e-13, "auto = reverse (t)")
        }
        // Rows: the VJP of e_i (per sample) is row i of each sample's Jacobian.
        let eRows = Tensor<Double>(shape: [3, b, 3], scalars: (0..<(3 * b * 3)).map { idx in idx / (b * 3) == idx % 3 ? 1 : 0 })
        let rows = try m.vjp(inputs, gradOutputs: eRows, isGradsBatched: true, wrt: wrt)
        // Columns: the JVP of e_j is column j.
        let eCols = Tensor<Double>(shape: [4, b, 4], scalars: (0..<(4 * b * 4)).map { idx in idx / (b * 4) == idx % 4 ? 1 : 0 })
        let cols = try m.jvp(inputs, tangentX: eCols, tangentT: nil)
        for bb in 0..<b {
            for i in 0..<3 {
                for j in 0..<4 {
                    let jv = rev.x!.scalars[(bb * 3 + i) * 4 + j]
                    #expect(abs(rows.x!.scalars[(i * b + bb) * 4 + j] - jv) <= 1e-13 * max(1, abs(jv)))
                    #expect(abs(cols.jvp.scalars[(j * b + bb) * 3 + i] - jv) <= 1e-13 * max(1, abs(jv)))
                }
                if t { #expect(abs(rows.t!.scalars[i * b + bb] - rev.t!.scalars[bb * 3 + i]) <= 1e-13 * max(1, abs(rev.t!.scalars[bb * 3 + i]))) }
            }
        }
    }

    @Test("float32 agrees with float64", arguments: activations)
    func precisions(act: String) throws {
        guard case .float32(let m32) = try model(Self.modelJSON(act, t: true, dtype: "float32")),
            case .float64(let m64) = try model(Self.modelJSON(act, t: true, dtype: "float64"))
        else { fatalError() }
        var rng = TestRNG(9)
        let x: Tensor<Double> = rng.tensor([3, 4])
        let t: Tensor<Double> = rng.tensor([3])
        let j32 = try m32.jacobian(Inputs(x: x.cast(), t: t.cast()), wrt: [.x, .t])
        let j64 = try m64.jacobian(Inputs(x: x, t: t), wrt: [.x, .t])
        expectClose(j32.x!.cast(to: Double.self), j64.x, tol: 1e-5, "\(act) jacobian float32 vs float64")
    }

    @Test("activation derivatives match finite differences at many points", arguments: activations)
    func scalarRules(act: String) throws {
        let spec = try ModelDecoder.decodeSpec(try json(#"{"layers": [\#(act)]}"#), at: "model")
        guard case .activation(let a) = spec.layers[0] else { fatalError() }
        for i in -80...80 {
            let z = Double(i) / 10 + 0.013  // avoid the kinks themselves
            let h = 1e-6
            let fd = (a.evaluate(z + h).value - a.evaluate(z - h).value) / (2 * h)
            #expect(abs(fd - a.evaluate(z).derivative) <= 1e-7 * max(1, abs(fd)), "\(act) at \(z)")
        }
    }

    @Test("derivatives at the kinks follow PyTorch")
    func kinks() {
        func act(_ op: String, _ given: [String: OpValue] = [:]) -> Activation { Activation.named(op, given)! }
        #expect(act("relu").evaluate(0.0).derivative == 0)
        #expect(act("leaky_relu", ["negative_slope": .number(0.2)]).evaluate(0.0).derivative == 0.2)
        #expect(act("elu", ["alpha": .number(0.5)]).evaluate(0.0).derivative == 0.5)
        #expect(abs(act("selu").evaluate(0.0).derivative - 1.0507009873554804934193349852946 * 1.6732632423543772848170429916717) < 1e-15)
        // softplus switches to the identity strictly above the threshold.
        #expect(act("softplus").evaluate(20.5).derivative == 1)
        #expect(act("softplus").evaluate(20.5).value == 20.5)
    }
}

extension Activation {
    /// `σ(z)` and `σ'(z)` through the library's real path: a float64 model of this one layer,
    /// its outputs and its per-sample Jacobian at `x = [[z]]`.
    func evaluate(_ z: Double) -> (value: Double, derivative: Double) {
        guard case .float64(let m)? = try? ModelBuilder.build(ModelSpec(dtype: .float64, layers: [.activation(self)])),
            let j = try? m.jacobian(Inputs(x: Tensor(shape: [1, 1], scalars: [z])), wrt: [.x]), let dx = j.x
        else { fatalError("a one-activation model must build and differentiate") }
        return (j.outputs.scalars[0], dx.scalars[0])
    }
}
