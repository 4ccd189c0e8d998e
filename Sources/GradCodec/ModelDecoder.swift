import GradCore

/// Reads the model format of docs/api.md (`inputs`, `dtype`, `layers`, `weights`) into a validated model.
public enum ModelDecoder {
    /// Fields each op accepts besides `op`.
    static let opFields: [String: Set<String>] = [
        "linear": ["weight", "bias"], "leaky_relu": ["negative_slope"], "elu": ["alpha"], "gelu": ["approximate"],
        "softplus": ["beta", "threshold"], "relu": [], "selu": [], "silu": [], "sigmoid": [], "tanh": [], "identity": [],
    ]

    /// Decodes and validates the model object at `path` (e.g. `model`); every problem is reported with its full path.
    /// `binaryWeights` are named tensors from a binary body, merged into `weights`. A model with
    /// more than `maxLayers` layers is refused before any layer is decoded.
    public static func decode(
        _ value: JSONValue, at path: String = "model", binaryWeights: [String: AnyTensor] = [:], maxLayers: Int = .max
    ) throws(GradError) -> AnyModel {
        let spec = try decodeSpec(value, at: path, binaryWeights: binaryWeights, maxLayers: maxLayers)
        do {
            return try ModelBuilder.build(spec)
        } catch .invalid(let issues) {
            throw .invalid(issues.map { FieldIssue(path: "\(path).\($0.path)", message: $0.message) })
        } catch {
            throw error
        }
    }

    /// Decodes the JSON into a ``ModelSpec`` (types, names and tensors), leaving shapes to ``ModelBuilder``.
    public static func decodeSpec(
        _ value: JSONValue, at path: String, binaryWeights: [String: AnyTensor] = [:], maxLayers: Int = .max
    ) throws(GradError) -> ModelSpec {
        guard case .object(let obj) = value else {
            throw .invalid(path, "expected a model object (or a registered model id string), got \(value.typeName)")
        }
        if case .array(let items)? = obj["layers"], items.count > maxLayers {
            throw .limitExceeded(
                path: "\(path).layers", limit: "--max-layers",
                message: "the model has \(items.count) layers; this server accepts at most \(maxLayers)")
        }
        var issues: [FieldIssue] = []
        for key in obj.keys where !["inputs", "dtype", "layers", "weights"].contains(key) {
            issues.append(FieldIssue(path: "\(path).\(key)", message: "unknown field (a model has inputs, dtype, layers, weights)"))
        }
        var inputs = ["x"]
        if let v = obj["inputs"] {
            if case .array(let items) = v, items.allSatisfy({ if case .string = $0 { true } else { false } }) {
                inputs = items.map { if case .string(let s) = $0 { s } else { "" } }
            } else {
                issues.append(FieldIssue(path: "\(path).inputs", message: "expected [\"x\"] or [\"x\", \"t\"], got \(v.typeName)"))
            }
        }
        var dtype = DType.float32
        if let v = obj["dtype"] {
            if case .string(let s) = v, let d = DType(rawValue: s) {
                dtype = d
            } else {
                issues.append(FieldIssue(path: "\(path).dtype", message: "expected \"float32\" or \"float64\""))
            }
        }
        // Named weights.
        var named: [String: AnyTensor] = binaryWeights
        if let w = obj["weights"] {
            if case .object(let wobj) = w {
                for (name, tv) in wobj.entries {
                    do { named[name] = try TensorDecoder.decode(tv, at: "\(path).weights.\(name)") } catch .invalid(let more) {
                        issues += more
                    } catch {}
                }
            } else {
                issues.append(FieldIssue(path: "\(path).weights", message: "expected an object of named tensors, got \(w.typeName)"))
            }
        }
        var used = Set<String>()
        var layers: [LayerSpec] = []
        switch obj["layers"] {
        case nil:
            issues.append(FieldIssue(path: "\(path).layers", message: "required"))
        case .array(let items)?:
            if items.isEmpty { issues.append(FieldIssue(path: "\(path).layers", message: "must hold at least one layer")) }
            for (i, item) in items.enumerated() {
                let lp = "\(path).layers[\(i)]"
                do {
                    if let layer = try decodeLayer(item, at: lp, named: named, used: &used) { layers.append(layer) }
                } catch .invalid(let more) {
                    issues += more
                } catch {}
            }
        case .numbers(let s, _)? where s == [0]:
            issues.append(FieldIssue(path: "\(path).layers", message: "must hold at least one layer"))
        case let other?:
            issues.append(FieldIssue(path: "\(path).layers", message: "expected an array of layer objects, got \(other.typeName)"))
        }
        for name in named.keys.sorted() where !used.contains(name) && issues.isEmpty {
            issues.append(FieldIssue(path: "\(path).weights.\(name)", message: "not referenced by any layer"))
        }
        if !issues.isEmpty { throw .invalid(issues) }
        return ModelSpec(inputs: inputs, dtype: dtype, layers: layers)
    }

    private static func decodeLayer(
        _ value: JSONValue, at lp: String, named: [String: AnyTensor], used: inout Set<String>
    ) throws(GradError) -> LayerSpec? {
        guard case .object(let lobj) = value else { throw .invalid(lp, "expected a layer object, got \(value.typeName)") }
        guard case .string(let op)? = lobj["op"] else { throw .invalid("\(lp).op", "required: one of linear, \(Activation.opNames.joined(separator: ", "))") }
        guard let allowed = opFields[op] else {
            throw .invalid("\(lp).op", "unknown op \"\(op)\"; expected one of linear, \(Activation.opNames.joined(separator: ", "))")
        }
        var issues: [FieldIssue] = []
        for key in lobj.keys where key != "op" && !allowed.contains(key) {
            issues.append(
                FieldIssue(
                    path: "\(lp).\(key)",
                    message: "unknown field for op \"\(op)\""
                        + (allowed.isEmpty ? " (it takes no parameters)" : " (it takes \(allowed.sorted().joined(separator: ", ")))")))
        }
        func number(_ key: String, default d: Double) -> Double {
            guard let v = lobj[key] else { return d }
            if case .number(let x) = v, x.isFinite { return x }
            issues.append(FieldIssue(path: "\(lp).\(key)", message: "expected a finite number, got \(v.typeName)"))
            return d
        }
        func parameter(_ key: String) -> ParameterSpec? {
            guard let v = lobj[key] else { return nil }
            if case .string(let name) = v {
                guard let t = named[name] else {
                    issues.append(FieldIssue(path: "\(lp).\(key)", message: "names \"\(name)\", which is not an entry of weights"))
                    return nil
                }
                used.insert(name)
                return ParameterSpec(name: name, tensor: t)
            }
            do { return ParameterSpec(name: nil, tensor: try TensorDecoder.decode(v, at: "\(lp).\(key)")) } catch .invalid(let more) {
                issues += more
            } catch {}
            return nil
        }
        let layer: LayerSpec?
        switch op {
        case "linear":
            let w = parameter("weight")
            let b = parameter("bias")
            if lobj["weight"] == nil { issues.append(FieldIssue(path: "\(lp).weight", message: "required")) }
            layer = w.map { .linear(weight: $0, bias: b) }
        case "leaky_relu": layer = .activation(.leakyReLU(negativeSlope: number("negative_slope", default: 0.01)))
        case "elu": layer = .activation(.elu(alpha: number("alpha", default: 1)))
        case "gelu":
            var approx = GELUApproximation.none
            if let v = lobj["approximate"] {
                if case .string(let s) = v, let a = GELUApproximation(rawValue: s) {
                    approx = a
                } else {
                    issues.append(FieldIssue(path: "\(lp).approximate", message: "expected \"none\" or \"tanh\""))
                }
            }
            layer = .activation(.gelu(approximate: approx))
        case "softplus":
            let beta = number("beta", default: 1)
            if beta == 0 { issues.append(FieldIssue(path: "\(lp).beta", message: "must not be 0")) }
            layer = .activation(.softplus(beta: beta, threshold: number("threshold", default: 20)))
        case "relu": layer = .activation(.relu)
        case "selu": layer = .activation(.selu)
        case "silu": layer = .activation(.silu)
        case "sigmoid": layer = .activation(.sigmoid)
        case "tanh": layer = .activation(.tanh)
        default: layer = .activation(.identity)
        }
        if !issues.isEmpty { throw .invalid(issues) }
        return layer
    }
}
