/// The primal inputs of one request: `x` `[B, D]` and, for models with t, `t` `[B]`.
public struct Inputs<S: BLASScalar>: Sendable {
    /// `[B, D]`.
    public var x: Tensor<S>
    /// `[B]`, present exactly when the model takes t.
    public var t: Tensor<S>?

    /// Creates inputs.
    public init(x: Tensor<S>, t: Tensor<S>? = nil) {
        self.x = x
        self.t = t
    }

    /// Batch size B.
    public var batch: Int { x.shape[0] }
    /// Feature count D.
    public var width: Int { x.shape[1] }
}

extension Model {
    /// Checks `inputs` against the model; problems are placed at ``Place/input(_:)``.
    func validate(_ inputs: Inputs<S>) throws(GradError) {
        var issues: [FieldIssue] = []
        let x = inputs.x
        if x.rank != 2 || x.shape[0] < 1 || x.shape[1] < 1 {
            issues.append(FieldIssue(.input(.x), "expected a non-empty [B, D] array, got shape \(Shape.describe(x.shape))"))
        } else if let d = inputWidth, x.shape[1] != d {
            issues.append(FieldIssue(.input(.x), "expected [\(x.shape[0]), \(d)] (D = \(d) features), got \(Shape.describe(x.shape))"))
        }
        if hasT {
            if let t = inputs.t {
                if x.rank == 2, t.shape != [x.shape[0]] {
                    issues.append(FieldIssue(.input(.t), "expected shape [\(x.shape[0])] (one t per sample), got \(Shape.describe(t.shape))"))
                }
            } else {
                issues.append(FieldIssue(.input(.t), "required: the model's inputs are [\"x\", \"t\"]"))
            }
        } else if inputs.t != nil {
            issues.append(FieldIssue(.input(.t), "the model has no t input (its inputs are [\"x\"])"))
        }
        if let issue = nonFinite(x, at: .input(.x)) { issues.append(issue) }
        if let t = inputs.t, let issue = nonFinite(t, at: .input(.t)) { issues.append(issue) }
        if !issues.isEmpty { throw .invalid(issues) }
    }

    /// A finite value can still overflow when cast to float32 (`1e300`); refuse it by name. A
    /// tensor its decoder checked (``Tensor/isKnownFinite``, never a cast one) is not read again.
    func nonFinite(_ t: Tensor<S>, at place: Place) -> FieldIssue? {
        guard !t.isKnownFinite, let i = FiniteCheck.firstNonFinite(t) else { return nil }
        return FieldIssue(place, "the value at flat index \(i) is not finite in \(S.dtype.rawValue) (|v| above \(S.greatestFiniteMagnitude))")
    }
}
