/// One layer of a model: a `linear` map or an elementwise activation.
public enum Layer<S: BLASScalar>: Sendable, Equatable {
    case linear(Linear<S>)
    case activation(Activation)
}

/// A validated model: a chain of layers applied to `x` (or to `[x | t]`), in one precision.
///
/// Built only by ``ModelBuilder``, so every shape in it is consistent.
public struct Model<S: BLASScalar>: Sendable, Equatable {
    /// Whether the model takes `t` as a last input column.
    public let hasT: Bool
    /// The layers, applied in order.
    public let layers: [Layer<S>]
    /// Feature count D of `x` (without t), or nil for a model of activations only.
    public let inputWidth: Int?

    init(hasT: Bool, layers: [Layer<S>], inputWidth: Int?) {
        self.hasT = hasT
        self.layers = layers
        self.inputWidth = inputWidth
    }

    /// Width of the concatenated input `[x | t]` for `x` of width `d`.
    func concatWidth(_ d: Int) -> Int { hasT ? d + 1 : d }

    /// Widths at every layer boundary for `x` of width `d`: `widths[0]` is `[x | t]`, `widths[l+1]` the output of layer l.
    func widths(d: Int) -> [Int] {
        var w = [concatWidth(d)]
        for layer in layers {
            if case .linear(let lin) = layer { w.append(lin.outFeatures) } else { w.append(w[w.count - 1]) }
        }
        return w
    }

    /// Output width D' for `x` of width `d`.
    public func outputWidth(d: Int) -> Int { widths(d: d).last! }

    /// Number of scalar parameters (a weight shared by several layers counts once).
    public var parameterCount: Int {
        var seen = Set<String>()
        var n = 0
        for case .linear(let lin) in layers {
            if seen.insert(lin.weightName).inserted { n += lin.weight.count }
            if let b = lin.bias, let name = lin.biasName, seen.insert(name).inserted { n += b.count }
        }
        return n
    }

    /// Parameter names and shapes in layer order, each name once.
    public var parameters: [(name: String, shape: [Int])] {
        var seen = Set<String>()
        var out: [(String, [Int])] = []
        for case .linear(let lin) in layers {
            if seen.insert(lin.weightName).inserted { out.append((lin.weightName, lin.weight.shape)) }
            if let b = lin.bias, let name = lin.biasName, seen.insert(name).inserted { out.append((name, b.shape)) }
        }
        return out
    }
}

/// A model whose precision is chosen at run time by its `dtype`.
public enum AnyModel: Sendable, Equatable {
    case float32(Model<Float>)
    case float64(Model<Double>)

    /// The compute precision.
    public var dtype: DType {
        switch self {
        case .float32: .float32
        case .float64: .float64
        }
    }

    /// Whether the model takes `t`.
    public var hasT: Bool {
        switch self {
        case .float32(let m): m.hasT
        case .float64(let m): m.hasT
        }
    }

    /// Feature count D of `x`, or nil for a model of activations only.
    public var inputWidth: Int? {
        switch self {
        case .float32(let m): m.inputWidth
        case .float64(let m): m.inputWidth
        }
    }

    /// Output width for `x` of width `d`.
    public func outputWidth(d: Int) -> Int {
        switch self {
        case .float32(let m): m.outputWidth(d: d)
        case .float64(let m): m.outputWidth(d: d)
        }
    }

    /// Scalar parameter count.
    public var parameterCount: Int {
        switch self {
        case .float32(let m): m.parameterCount
        case .float64(let m): m.parameterCount
        }
    }

    /// Parameter names and shapes.
    public var parameters: [(name: String, shape: [Int])] {
        switch self {
        case .float32(let m): m.parameters
        case .float64(let m): m.parameters
        }
    }

    /// The layer ops, in order (`linear`, `selu`, …).
    public var ops: [String] {
        func names<S>(_ m: Model<S>) -> [String] {
            m.layers.map {
                if case .activation(let a) = $0 { return a.op }
                return OpDeclaration.linear.name
            }
        }
        switch self {
        case .float32(let m): return names(m)
        case .float64(let m): return names(m)
        }
    }
}
