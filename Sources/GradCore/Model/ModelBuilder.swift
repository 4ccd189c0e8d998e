/// A parameter as the model format gives it: a tensor, named when it came from `weights`.
public struct ParameterSpec: Sendable {
    /// The `weights` entry it came from, or nil for an inline tensor.
    public var name: String?
    /// The values.
    public var tensor: AnyTensor

    /// Creates a parameter spec.
    public init(name: String?, tensor: AnyTensor) {
        self.name = name
        self.tensor = tensor
    }
}

/// One layer as the model format describes it, before validation.
public enum LayerSpec: Sendable {
    case linear(weight: ParameterSpec, bias: ParameterSpec?)
    case activation(Activation)
}

/// A model as the model format describes it (architecture and weights), before validation.
public struct ModelSpec: Sendable {
    /// `["x"]` or `["x", "t"]`.
    public var inputs: [String]
    /// Compute precision.
    public var dtype: DType
    /// Layers in order.
    public var layers: [LayerSpec]

    /// Creates a spec.
    public init(inputs: [String] = ["x"], dtype: DType = .float32, layers: [LayerSpec]) {
        self.inputs = inputs
        self.dtype = dtype
        self.layers = layers
    }
}

/// Turns a ``ModelSpec`` into a ``Model``, reporting every problem at its place in the model.
public enum ModelBuilder {
    /// Validates `spec` and builds the model in its dtype.
    ///
    /// - Throws: ``GradError/invalid(_:)`` listing every problem at its ``ModelPlace`` (`layers[3].weight`).
    public static func build(_ spec: ModelSpec) throws(GradError) -> AnyModel {
        switch spec.dtype {
        case .float32: return .float32(try build(spec, as: Float.self))
        case .float64: return .float64(try build(spec, as: Double.self))
        }
    }

    static func build<S: BLASScalar>(_ spec: ModelSpec, as: S.Type) throws(GradError) -> Model<S> {
        var issues: [FieldIssue] = []
        let hasT: Bool
        switch spec.inputs {
        case ["x"]: hasT = false
        case ["x", "t"]: hasT = true
        default:
            issues.append(FieldIssue(.model(.inputs), "expected [\"x\"] or [\"x\", \"t\"], got \(spec.inputs)"))
            hasT = false
        }
        if spec.layers.isEmpty { issues.append(FieldIssue(.model(.layers), "must hold at least one layer")) }

        var layers: [Layer<S>] = []
        var width: Int? = nil  // width flowing into the next layer, once a linear layer fixed it
        var widthSource = ""
        var inputWidth: Int? = nil
        var sharedShapes: [String: [Int]] = [:]
        // Parameter names and where they are used: an inline tensor takes the default name
        // `layers.<i>.weight`, which must not also name a `weights` entry (one name, two tensors:
        // gradients would be summed into one entry and two models would share one id).
        var inlineNames: [String: ModelPlace] = [:]
        var namedUses: [String: ModelPlace] = [:]
        for (i, layer) in spec.layers.enumerated() {
            func place(_ field: String) -> Place { .model(.layer(i, field: field)) }
            switch layer {
            case .activation(let a):
                layers.append(.activation(a))
            case .linear(let wSpec, let bSpec):
                let w = wSpec.tensor.cast(to: S.self)
                var ok = true
                if w.rank != 2 || w.shape.contains(where: { $0 < 1 }) {
                    issues.append(
                        FieldIssue(
                            place("weight"), "expected a 2-D [out, in] tensor with non-zero extents, got shape \(Shape.describe(w.shape))"))
                    ok = false
                } else if let width, w.shape[1] != width {
                    issues.append(
                        FieldIssue(
                            place("weight"),
                            "expected \(Shape.describe([w.shape[0], width])) (\(width) input features from \(widthSource)), got \(Shape.describe(w.shape))")
                    )
                    ok = false
                } else if width == nil, hasT, w.shape[1] < 2 {
                    issues.append(
                        FieldIssue(
                            place("weight"), "with inputs [\"x\", \"t\"] the first linear layer takes D + 1 ≥ 2 inputs, got shape \(Shape.describe(w.shape))"))
                    ok = false
                }
                if let bad = FiniteCheck.firstNonFinite(w) {
                    issues.append(FieldIssue(place("weight"), "non-finite value at flat index \(bad)"))
                    ok = false
                }
                var bias: Tensor<S>? = nil
                if let bSpec {
                    let b = bSpec.tensor.cast(to: S.self)
                    if w.rank == 2, b.shape != [w.shape[0]] {
                        issues.append(FieldIssue(place("bias"), "expected shape [\(w.shape[0])], got \(Shape.describe(b.shape))"))
                        ok = false
                    }
                    if let bad = FiniteCheck.firstNonFinite(b) {
                        issues.append(FieldIssue(place("bias"), "non-finite value at flat index \(bad)"))
                        ok = false
                    }
                    bias = b
                }
                for (p, spec) in [("weight", Optional(wSpec)), ("bias", bSpec)] {
                    guard let spec else { continue }
                    if let name = spec.name {
                        if namedUses[name] == nil { namedUses[name] = .layer(i, field: p) }
                    } else {
                        inlineNames["layers.\(i).\(p)"] = .layer(i, field: p)
                    }
                }
                for (p, name, shape) in [("weight", wSpec.name, w.shape), ("bias", bSpec?.name, bSpec?.tensor.shape ?? [])] {
                    guard let name else { continue }
                    if let prior = sharedShapes[name], prior != shape {
                        issues.append(
                            FieldIssue(
                                place(p), "weights entry \"\(name)\" is used with shapes \(Shape.describe(prior)) and \(Shape.describe(shape))"))
                        ok = false
                    }
                    sharedShapes[name] = shape
                }
                if w.rank == 2 {
                    if width == nil { inputWidth = w.shape[1] - (hasT ? 1 : 0) }
                    width = w.shape[0]
                    widthSource = "layers[\(i)] (out = \(w.shape[0]))"
                }
                if ok {
                    layers.append(
                        .linear(
                            Linear(
                                weight: w, bias: bias,
                                weightName: wSpec.name ?? "layers.\(i).weight",
                                biasName: bSpec.map { $0.name ?? "layers.\(i).bias" })))
                }
            }
        }
        for (name, inlinePath) in inlineNames.sorted(by: { $0.key < $1.key }) {
            guard let namedPath = namedUses[name] else { continue }
            issues.append(
                FieldIssue(
                    .model(namedPath),
                    "names weights entry \"\(name)\", which is also the name of the inline tensor at \(inlinePath.path); rename the weights entry (one name, one tensor)"
                ))
        }
        if !issues.isEmpty { throw .invalid(issues) }
        return Model(hasT: hasT, layers: layers, inputWidth: inputWidth)
    }
}
