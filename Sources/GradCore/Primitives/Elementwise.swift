/// An elementwise activation `y = σ(z)`: its forward value and its derivative `σ'(z)`, side by side.
///
/// The Jacobian of an elementwise op is `diag(σ'(z))`, so both rules are one multiply:
/// the VJP rule is `ḡ_z = ḡ_y ⊙ σ'(z)` and the JVP rule is `ż_y = ż ⊙ σ'(z)`. The sweeps apply
/// them through ``Elementwise/scale(_:rows:by:samples:order:)``; each primitive only states its
/// value and derivative, computed in one fused pass during the forward.
protocol ElementwiseRule: Sendable {
    /// `σ(z)` and `σ'(z)`.
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S)

    /// What one evaluation costs in ``ResourcePlan/work``'s FLOP-equivalents (~0.01 ns each):
    /// 3 000 (~30 ns, a libm call such as `erf`, `tanh` or `log1p`) unless the rule says less.
    static func evaluationCost<S: BLASScalar>(_: S.Type) -> Int
}

extension ElementwiseRule {
    static func evaluationCost<S: BLASScalar>(_: S.Type) -> Int { 3_000 }
}

/// How rows of a K-batched tangent or cotangent matrix map to samples.
public enum RowOrder: Sendable, Equatable {
    /// Row `k·B + b` belongs to sample b (the `[K, B, …]` layout of `is_grads_batched`).
    case kMajor
    /// Row `b·K + k` belongs to sample b (the `[B, K, …]` layout of per-sample Jacobians).
    case bMajor
}

enum Elementwise {
    /// Applies `rule` to `z` (`count` elements) writing values to `y` and, when asked, derivatives to `d`.
    @inline(__always)
    static func run<R: ElementwiseRule, S: BLASScalar>(
        _ rule: R, _ z: UnsafePointer<S>, _ y: UnsafeMutablePointer<S>, _ d: UnsafeMutablePointer<S>?, count: Int
    ) {
        if let d {
            for i in 0..<count {
                let (v, g) = rule.evaluate(z[i])
                y[i] = v
                d[i] = g
            }
        } else {
            for i in 0..<count { y[i] = rule.evaluate(z[i]).value }
        }
    }

    /// Multiplies each of the `K·B` rows of `m` (width `width`) by the derivative row of its sample.
    ///
    /// This is both the VJP and the JVP rule of every elementwise primitive.
    static func scale<S: BLASScalar>(
        _ m: UnsafeMutablePointer<S>, rows: Int, width: Int, by d: UnsafePointer<S>, samples: Int, order: RowOrder
    ) {
        if rows == 0 || width == 0 { return }
        let k = rows / samples
        switch order {
        case .kMajor:
            let block = samples * width
            for kk in 0..<k {
                let base = m + kk * block
                for i in 0..<block { base[i] *= d[i] }
            }
        case .bMajor:
            for b in 0..<samples {
                let drow = d + b * width
                for kk in 0..<k {
                    let row = m + (b * k + kk) * width
                    for i in 0..<width { row[i] *= drow[i] }
                }
            }
        }
    }
}
